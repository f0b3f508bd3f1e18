"""Whether a process of this host still exists (shared files keep per-pid rows of workers that may be gone)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while pid exists, even when it belongs to another user (EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
