#!/usr/bin/env python
"""The no-download demo, DDC against lambda = 0: ``python scripts/demo.py [--workdir runs/demo]``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddc.demo import demo_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(demo_main())
