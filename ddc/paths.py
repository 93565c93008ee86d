"""Where a run finds its data, weights and caches: an argument, else an environment variable,
else a default. The one place that reads ``$DDC_DATA_ROOT``, ``$DDC_WEIGHTS_ROOT`` and
``$DDC_CACHE_DIR``."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(arg: str | Path | None = None) -> Path:
    """The data root: ``--data-root``, else ``$DDC_DATA_ROOT``, else ``./data``."""
    return Path(arg or os.environ.get("DDC_DATA_ROOT") or "data").expanduser()


def weights_root(arg: str | Path | None = None) -> Path:
    """The weights root: ``--weights-root``, else ``$DDC_WEIGHTS_ROOT``, else the current folder."""
    return Path(arg or os.environ.get("DDC_WEIGHTS_ROOT") or ".").expanduser()


def cache_dir(arg: str | Path | None = None) -> Path:
    """The cache folder: ``data.cache_dir``, else ``$DDC_CACHE_DIR``, else ``~/.cache/ddc``."""
    return Path(arg or os.environ.get("DDC_CACHE_DIR") or "~/.cache/ddc").expanduser()


# where a run keeps its final target softmax predictions (float16 [N, K], in the order of the
# target's files): written by the training loop, read by ``ddc.report.runs.load_target_probs``
TARGET_PROBS = Path("eval") / "target_probs.npy"
