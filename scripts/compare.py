#!/usr/bin/env python
"""Thin wrapper of ``ddc-compare``: ``python scripts/compare.py --help``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddc.report.cli import compare_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(compare_main())
