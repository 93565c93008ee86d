#!/usr/bin/env python
"""Train DDC / finetune / source-only: ``python scripts/train_ddc.py --config configs/siri_whu.json``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddc.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
