"""Shared fixtures: tiny generated data, paths to the shared real data and weights."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared"
DATA_ROOT = Path(os.environ.get("DDC_DATA_ROOT", SHARED / "data"))
WEIGHTS_ROOT = Path(os.environ.get("DDC_WEIGHTS_ROOT", SHARED / "weights"))

needs_data = pytest.mark.skipif(not (DATA_ROOT / "siri_whu").is_dir(),
                                reason=f"real datasets not found under {DATA_ROOT}")
needs_weights = pytest.mark.skipif(
    not (WEIGHTS_ROOT / "mobilenet_v2_1.0_224_no_top.weights.h5").is_file(),
    reason=f"ImageNet weights not found under {WEIGHTS_ROOT}")


def write_image(path: Path, arr: np.ndarray) -> None:
    """Writes ``arr`` (uint8/uint16, [H,W] or [H,W,C]) in the format of ``path``'s extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext in (".tif", ".tiff"):
        import tifffile
        tifffile.imwrite(str(path), arr)
        return
    from PIL import Image
    Image.fromarray(arr).save(str(path))


def make_tree(root: Path, classes=("a", "b", "c"), per_class=8, size=16, seed=0, ext=".png",
              colour_shift=0) -> Path:
    """A class-folder tree whose classes differ in mean brightness (learnable)."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        for i in range(per_class):
            base = 40 + 80 * k + colour_shift
            arr = np.clip(rng.normal(base, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            write_image(root / name / f"{i:03d}{ext}", arr)
    return root


def tiny_config(src: str, tgt: str, **train) -> dict:
    """A tiny lenet config over two folder trees (absolute roots)."""
    t = {"steps": 6, "batch_size": 4, "optimizer": "adam", "lr": 0.003, "eval_every": 3,
         "log_every": 1, "checkpoint_every": 3, "eval_batch_size": 16}
    t.update(train)
    return {"name": "tiny", "seed": 0,
            "data": {"source": {"root": str(src)}, "target": {"root": str(tgt)},
                     "image_size": 16, "channels": 3, "val_fraction": 0.25},
            "model": {"backbone": "lenet", "adapt_width": 16},
            "align": {"mmd": {"weight": 0.5}},
            "train": t}


@pytest.fixture
def tiny_trees(tmp_path):
    src = make_tree(tmp_path / "src", seed=1)
    tgt = make_tree(tmp_path / "tgt", seed=2, colour_shift=30)
    return src, tgt


@pytest.fixture
def write_config(tmp_path):
    def write(cfg: dict, name="config.json") -> Path:
        p = tmp_path / name
        p.write_text(json.dumps(cfg))
        return p
    return write


@pytest.fixture(autouse=True)
def _detach_run_logging():
    """Runs attach log handlers (stderr of the moment, train.log); close them after each test."""
    yield
    from ddc.train.rundir import detach_logging
    detach_logging()
