#!/usr/bin/env python
"""The no-download demo, DDC against lambda = 0: ``python scripts/demo.py [--workdir runs/demo]``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:  # Ctrl-C in the milliseconds before the entry point answers it itself
    from ddc.demo import demo_main
except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(demo_main())
