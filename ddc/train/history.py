"""Python-side state of a run between steps: its eval records and the Ctrl-C flag."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger("ddc.train.loop")


def read_history(path: Path) -> list[dict]:
    """Eval records of earlier sessions of this run (a torn last line from a kill is ignored)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def write_history(path: Path, history: list[dict]) -> None:
    """Rewrites the eval records whole under a temporary name, then renames: a kill leaves the
    old or the new file, never a torn line (the file is small: one line per evaluation)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, path)


class InterruptFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps, so the checkpoint it
    saves is consistent (the step counter and the weights agree); a second Ctrl-C interrupts at
    once."""

    def __init__(self):
        self.raised = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True
        log.warning("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
