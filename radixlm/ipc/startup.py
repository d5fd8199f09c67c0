"""Start-up failures of the scheduler process that happen before it can use its pipe.

The scheduler runs in a process started with multiprocessing's "spawn" method. Before the
process's target runs, the child re-imports the parent's `__main__` module. A script that
creates an `Engine` at module level, outside `if __name__ == "__main__":`, therefore creates
a second Engine inside the child while it is still bootstrapping; that Engine cannot start a
process and the child dies before it has received its pipe ends, so it cannot tell the parent
why. This module carries that one message through a file instead:

- in the child, `refuse_engine_during_bootstrap` (called first thing by every Engine) writes
  the error to `bootstrap_error_path(parent pid, own pid)` and raises it;
- in the parent, `take_bootstrap_error(child pid)` reads and deletes that file once the
  scheduler process has exited during start-up.

Invariant: the file exists only between the child's failure and the parent's read (or, when
the parent is not a radixlm engine, until the temporary directory is cleaned).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from typing import Optional

UNGUARDED_MAIN_HINT = (
    'create the Engine under `if __name__ == "__main__":` in the script you run: the scheduler '
    "process re-imports that script, and module-level code runs again there"
)


def bootstrap_error_path(parent_pid: int, child_pid: int) -> str:
    """Where child `child_pid` of `parent_pid` leaves the error that killed its bootstrap."""
    return os.path.join(tempfile.gettempdir(), f"radixlm-startup-{parent_pid}-{child_pid}.err")


def in_spawn_bootstrap() -> bool:
    """True while this process is a spawned child still importing its parent's `__main__`
    (multiprocessing's own test for starting a process too early)."""
    return bool(getattr(mp.current_process(), "_inheriting", False))


def refuse_engine_during_bootstrap() -> None:
    """Raise RuntimeError if an Engine is being created while this process bootstraps as a
    spawned child; the message is also left for the parent (see the module docstring)."""
    if not in_spawn_bootstrap():
        return
    message = (
        "radixlm.Engine() was called while a child process was bootstrapping (importing the main "
        f"module of its parent); {UNGUARDED_MAIN_HINT}"
    )
    # mp.parent_process() is only set once bootstrapping is over; a spawned child is a direct
    # child of the process that started it.
    try:
        with open(bootstrap_error_path(os.getppid(), os.getpid()), "w", encoding="utf-8") as f:
            f.write(message)
    except OSError:  # the parent then reports the exit without the message
        pass
    raise RuntimeError(message)


def take_bootstrap_error(child_pid: Optional[int]) -> Optional[str]:
    """The message child `child_pid` of this process left when its bootstrap failed, removing
    it; None if it left none."""
    if child_pid is None:
        return None
    path = bootstrap_error_path(os.getpid(), child_pid)
    try:
        with open(path, encoding="utf-8") as f:
            message = f.read()
    except OSError:
        return None
    try:
        os.remove(path)
    except OSError:
        pass
    return message
