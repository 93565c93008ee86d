"""ddc: deep domain confusion (and finetuning) for scene classification, in TensorFlow 2."""

__version__ = "0.1.0"
