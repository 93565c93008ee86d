#!/usr/bin/env python
"""Thin wrapper of ``ddc-compare``: ``python scripts/compare.py --help``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:  # Ctrl-C in the milliseconds before the entry point answers it itself
    from ddc.report.cli import compare_main
except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(compare_main())
