"""Child processes of tests: ended however the test went."""

from __future__ import annotations

import subprocess
from typing import Any


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill the child if it still runs, wait for it (no zombie) and close its stdout pipe
    (no ResourceWarning): for a test's `finally`."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
