#!/usr/bin/env python
"""Thin wrapper of ``ddc-predict``: ``python scripts/predict.py --help``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddc.report.cli import predict_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(predict_main())
