"""Child processes that end when their parent dies, whatever killed it (SIGKILL, OOM killer).

A ProcessPoolExecutor worker blocks on its call queue, whose write end it holds itself, so
it never sees end-of-file when the parent is gone: without this it runs on for good,
reparented to PID 1. Linux's PR_SET_PDEATHSIG is no answer here: it fires when the *thread*
that started the child exits, and the pool starts children from whichever thread submits.
So the child watches getppid() instead: once it differs from the pid it was started by,
the parent is gone and the child exits.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading

#: Seconds between two looks at the parent: a dead parent's children linger at most this long.
POLL_SECONDS = 0.5
#: Seconds a child has, after SIGTERM, to stop its own children before it is ended.
TERM_GRACE_SECONDS = 5.0


def exit_with_parent(parent_pid: int, poll_seconds: float = POLL_SECONDS) -> None:
    """In a child process: exit (status 1) as soon as `parent_pid` is no longer its parent.

    Call it first in the child (a pool's initializer). `parent_pid` must be taken in the
    parent (os.getpid() there) and passed in: read in the child it could already be init's.
    """
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_seconds):
            if os.getppid() != parent_pid:
                # SIGTERM first: a process with children of its own (uvicorn's supervisor)
                # stops them on it; then _exit, whatever the process did with the signal
                # (no threads may keep it alive for a parent that is gone).
                os.kill(os.getpid(), signal.SIGTERM)
                stop.wait(TERM_GRACE_SECONDS)
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str]) -> None:
    """`python -m swarmwatch.parentwatch PARENT_PID MODULE [ARGS...]`: run MODULE as
    `python -m MODULE ARGS...` would, ending when PARENT_PID stops being its parent
    (for children that are other programs' entry points, such as uvicorn)."""
    parent_pid, module, *args = argv
    exit_with_parent(int(parent_pid))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])


__all__ = ["POLL_SECONDS", "TERM_GRACE_SECONDS", "exit_with_parent", "main"]
