#!/usr/bin/env python
"""Train DDC / finetune / source-only: ``python scripts/train_ddc.py --config configs/siri_whu.json``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:  # Ctrl-C in the milliseconds before the entry point answers it itself
    from ddc.cli import train_main
except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(train_main())
