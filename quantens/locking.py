"""One process owns a result directory: an OS file lock that dies with its holder.

```python
import tempfile
from quantens.errors import LockedError
from quantens.locking import ResultDirLock

run = tempfile.mkdtemp()
with ResultDirLock(run, "train.py"):
    try:
        with ResultDirLock(run, "quantens.export"):  # a second owner, even in this process
            pass
    except LockedError as error:
        assert "in use by train.py" in str(error)
```

The lock is `fcntl.flock` on `<dir>/.lock`: the kernel releases it when the
holder exits, however it exits (kill -9 included), so a stale lock never
needs removing by hand. The file keeps the holder's pid, host and command so
that the one-line error can name them. Locks on a network file system are as
reliable as its `flock` (NFS v4 supports it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

from quantens.errors import LockedError
from quantens.layout import ResultDir

__all__ = [
    "ResultDirLock",
    "check_unlocked",
]


class ResultDirLock:
    """A context manager (or `acquire()`/`release()`) that owns `directory`.

    Creates the directory if needed; raises `LockedError` (exit code 2) when
    another process, or another lock object of this one, holds it. A block
    that fails before writing anything leaves no directory behind: the lock
    removes the directory it created when the lock file is all it holds.
    """

    def __init__(self, directory: str, command: str | None = None):
        self.directory = directory
        self.path = ResultDir(directory).path(ResultDir.LOCK)
        self.command = command or os.path.basename(sys.argv[0]) or "python"
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> ResultDirLock:
        self._created = not os.path.isdir(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _locked_error(self.directory, fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }).encode())
        self._fd = fd
        return self

    def release(self, failed: bool = False) -> None:
        """Unlocks; after a failure, removes the directory if it created it and it holds nothing."""
        if self._fd is None:
            return
        if failed and self._created and os.listdir(self.directory) == [ResultDir.LOCK]:
            os.remove(self.path)  # still locked: no other run can be using it
            os.rmdir(self.directory)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> ResultDirLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.release(failed=exc_type is not None)


def check_unlocked(directory: str) -> None:
    """Raises `LockedError` naming the holder when a run owns `directory` now; writes nothing.

    A command checks this before it reads any other state of a result
    directory, so that a directory in use is reported as such (not as, say,
    missing weights that the running process has not written yet). A
    directory without a lock file, or one that does not exist, passes.

    ```python
    import tempfile
    from quantens.errors import LockedError
    from quantens.locking import ResultDirLock, check_unlocked

    run = tempfile.mkdtemp()
    check_unlocked(run)  # nobody holds it
    with ResultDirLock(run, "train.py"):
        try:
            check_unlocked(run)
            raise AssertionError("a held directory passed")
        except LockedError as error:
            assert "in use by train.py" in str(error)
    ```
    """
    path = ResultDir(directory).path(ResultDir.LOCK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or none we may read): nobody to name
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked_error(directory, fd) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _locked_error(directory: str, fd: int) -> LockedError:
    holder = _read_holder(fd)
    return LockedError(
        f"{directory} is in use by {holder.get('command', 'another run')} "
        f"(pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
        f"{holder.get('since', '?')}): wait for it to finish or stop it, then run "
        "again; or choose another --result-path"
    )


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
