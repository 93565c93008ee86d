"""Tiny generated image trees and files, good and bad, and a runner for the real CLI.

Shared by the robustness and fault tests. Everything is written under a test's ``tmp_path``;
nothing here reads ``../shared``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_ddc.py"


# ----------------------------------------------------------------------------- good images

def write_image(path: Path, arr: np.ndarray, **save_kw) -> Path:
    """Writes ``arr`` (uint8/uint16, [H,W] or [H,W,C]) in the format of ``path``'s extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        tifffile.imwrite(str(path), arr, **save_kw)
    else:
        from PIL import Image
        Image.fromarray(arr).save(str(path), **save_kw)
    return path


def class_image(k: int, rng: np.random.Generator, size: int = 16, shift: int = 0) -> np.ndarray:
    """An RGB uint8 image whose mean brightness tells its class ``k`` (learnable in a few steps)."""
    return np.clip(rng.normal(40 + 80 * k + shift, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def make_tree(root: Path, classes=("a", "b", "c"), per_class: int = 6, size: int = 16,
              seed: int = 0, ext: str = ".png", shift: int = 0) -> Path:
    """A class-folder tree ``root/<class>/<i>.<ext>`` of ``per_class`` images per class."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        for i in range(per_class):
            write_image(Path(root) / name / f"{i:03d}{ext}", class_image(k, rng, size, shift))
    return Path(root)


def add_mixed_formats(class_dir: Path, k: int, seed: int = 0) -> list[Path]:
    """Adds images of every awkward kind that must decode to class ``k``'s brightness:
    other sizes, grayscale, gray+alpha, RGBA, palette, 16-bit PNG, 16-bit and float TIFF,
    5-band TIFF, planar (bands-first) TIFF, CMYK and grayscale JPEG, GIF, BMP."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = class_image(k, rng, 16)
    big = class_image(k, rng, 40)[:, :27]           # 40 x 27: other size and aspect
    gray = rgb.mean(axis=-1).astype(np.uint8)
    d = Path(class_dir)
    out = [
        write_image(d / "big.png", big),
        write_image(d / "gray.png", gray),
        write_image(d / "rgba.png", np.dstack([rgb, np.full(gray.shape, 9, np.uint8)])),
        write_image(d / "gray16.png", gray.astype(np.uint16) * 257),
        write_image(d / "rgb16.tif", rgb.astype(np.uint16) * 257, photometric="rgb"),
        write_image(d / "float.tif", rgb.astype(np.float32) / 255, photometric="rgb"),
        write_image(d / "bands5.tif", np.dstack([rgb, gray, gray]), photometric="minisblack",
                    planarconfig="contig"),
        write_image(d / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                    planarconfig="separate"),
        write_image(d / "gray.jpg", gray, quality=95),
        write_image(d / "small.bmp", rgb[:9, :11]),
        write_image(d / "frame.gif", rgb),
    ]
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    Image.fromarray(gray).convert("LA").save(d / "graya.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    return out + [d / "palette.png", d / "graya.png", d / "cmyk.jpg"]


# ----------------------------------------------------------------------------- bad files

def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def truncated_jpeg(path: Path, keep: float | int = 0.6, seed: int = 0) -> Path:
    """A JPEG cut after ``keep`` (a fraction, or a byte count if an int > 1) of its bytes."""
    data = jpeg_bytes(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    n = keep if isinstance(keep, int) and keep > 1 else int(len(data) * keep)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data[:n])
    return Path(path)


def truncated_png(path: Path, keep: float = 0.6, seed: int = 0) -> Path:
    data = png_bytes(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data[:int(len(data) * keep)])
    return Path(path)


def zero_byte(path: Path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"")
    return Path(path)


def junk(path: Path, data: bytes = b"this is not an image\n") -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return Path(path)


def add_non_images(class_dir: Path) -> None:
    """Files that are not images by name: they must be ignored, not reported."""
    d = Path(class_dir)
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1\0")
    (d / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (d / "notes.txt").write_text("collected 2019\n")
    (d / "._000.png").write_bytes(b"\0\5\26\7AppleDouble")   # macOS resource fork twin


# ----------------------------------------------------------------------------- configs and CLI

def tiny_config(src, tgt, name: str = "tiny", **sections) -> dict:
    """A tiny lenet DDC config over two folder trees (absolute roots).

    ``sections`` are merged in recursively, e.g. ``train={"steps": 4}``,
    ``data={"source": {"class_map": {...}}}``, ``seed=3``.
    """
    cfg = {
        "name": name, "seed": 0, "deterministic": True,
        "data": {"source": {"root": str(src)}, "target": {"root": str(tgt)},
                 "image_size": 16, "channels": 3, "val_fraction": 0.25, "decode_workers": 2},
        "model": {"backbone": "lenet", "adapt_width": 16},
        "align": {"mmd": {"weight": 0.5}},
        "train": {"steps": 6, "batch_size": 4, "optimizer": "adam", "lr": 0.003,
                  "eval_every": 3, "log_every": 1, "checkpoint_every": 3, "eval_batch_size": 16},
    }
    return merge(cfg, sections)


def merge(base: dict, changes: dict) -> dict:
    """``base`` updated by ``changes`` recursively (nested dicts merge, other values replace)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def write_config(path: Path, cfg: dict) -> Path:
    Path(path).write_text(json.dumps(cfg, indent=1))
    return Path(path)


def cli_env(tmp_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2",
               DDC_CACHE_DIR=str(Path(tmp_path) / "cache"), CUDA_VISIBLE_DEVICES="")
    env.pop("DDC_DATA_ROOT", None)
    return env


def cli_args(config: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--config", str(config), "--workdir", str(workdir),
            *extra]


def run_cli(config: Path, workdir: Path, *extra: str, tmp_path: Path,
            timeout: float = 180) -> subprocess.CompletedProcess:
    """Runs ``scripts/train_ddc.py`` as a user would; returns the completed process (text)."""
    return subprocess.run(cli_args(config, workdir, *extra), cwd=REPO, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_clean_error(proc_or_code, stderr: str, *fragments: str) -> str:
    """Exit status 2, exactly one ``error:`` line holding every fragment, no traceback."""
    code = proc_or_code if isinstance(proc_or_code, int) else proc_or_code.returncode
    assert code == 2, f"exit status {code}, stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"
    return lines[0]


METRIC_KEYS = ("steps", "skipped_steps", "source_val_acc", "best_source_val_acc",
               "best_source_val_step", "target_acc_at_best_source_val", "target_acc",
               "target_mean_class_acc", "target_macro_f1", "target_per_class_acc",
               "target_counts", "target_entropy", "classes", "n_skipped_files")


def metrics_of(results: dict) -> dict:
    """The parts of ``results.json`` that must not depend on timing or on interruptions."""
    return {k: results[k] for k in METRIC_KEYS}
