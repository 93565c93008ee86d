from setuptools import find_packages, setup

setup(
    name="ddc",
    version="0.1.0",
    description="Deep domain confusion (DDC) and finetuning for scene classification, TensorFlow 2",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ddc", "ddc.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "tensorflow-datasets",
        "tensorboard",
        "numpy",
        "tqdm",
        "tifffile",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "pillow"]},
    entry_points={
        "console_scripts": [
            "ddc-train=ddc.cli:train_main",
            "ddc-evaluate=ddc.report.cli:evaluate_main",
            "ddc-predict=ddc.report.cli:predict_main",
            "ddc-compare=ddc.report.cli:compare_main",
            "ddc-demo=ddc.demo:demo_main",
        ]
    },
)
