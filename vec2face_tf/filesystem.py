"""File-system safety shared by the cache, training and export: an exclusive folder lock, and
the wording of a full disk.

The lock is an OS file lock (``flock``): the kernel releases it when the holder exits, so a
killed run never leaves a stale lock behind. The lock file names its holder (pid and start
time) for the message that a second run gets.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import time
from collections.abc import Callable, Iterator

_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# TF's C++ writers report ENOSPC as a ResourceExhaustedError whose text is strerror's.
_NO_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike,
                   refuse: Callable[[str], Exception]) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created with its folder) for the block.

    Args:
      path: the lock file.
      refuse: builds the exception to raise when another process holds the lock; it gets
        that process's description ("pid 123 since 2026-11-26 20:00:00").

    Raises:
      Whatever ``refuse`` returns, when the lock is held elsewhere; OSError when the lock
      file cannot be created or written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.seek(0)
            raise refuse(handle.read().strip() or "an unknown process") from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()  # Closing releases the flock.


def is_out_of_space(error: BaseException) -> bool:
    """Whether ``error`` (an OSError, or a TF error from a C++ writer) means the disk is full."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return True
    return any(text in str(error) for text in _NO_SPACE_TEXTS)


def free_space_text(path: str | os.PathLike) -> str:
    """``"1.2 MiB free"`` on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = pathlib.Path(path)
    for folder in (path, *path.parents):
        try:
            stats = os.statvfs(folder)
        except OSError:
            continue
        free = stats.f_bavail * stats.f_frsize
        return f"{free / 2**20:.1f} MiB free" if free >= 2**20 else f"{free // 1024} KiB free"
    return "free space unknown"


def error_text(error: BaseException) -> str:
    """The error's text without TF's ``{{function_node ...}}`` prefix."""
    text = str(error).strip()
    return text.rsplit("}}", 1)[-1].strip() if text.startswith("{{") else text
