"""The store's per-adapter lock (an OS file lock locally, a lock file elsewhere), and who writes when.

Every write to the store (publish, promote, rollback, recover) happens under the lock of the
adapter it changes, so version numbers and alias moves are serialised. Locally that is a
``filelock`` lock, which the OS releases when its holder dies (even by SIGKILL). On other
filesystems it is a lock file created with exclusive create (``xb``) where the store supports it,
else written and read back; a lock older than ``stale_s`` is taken to belong to a dead writer and
broken, because nothing refreshes a lock that is held.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from modft_utils.store.records import RegistryError

POLL_S = 0.1


def now_iso() -> str:
    """The UTC time to the second, as audit records and manifests write it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def whoami() -> str:
    """``user@host`` for audit records and lock files."""
    try:
        user = getpass.getuser()
    except Exception:  # getpass raises varied errors in containers with no passwd entry
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this machine still runs (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def held(fs, path: str, name: str, *, local: bool, timeout: float, stale_s: float) -> Iterator[None]:
    """Hold the lock at ``path`` for adapter ``name``; RegistryError naming both after ``timeout`` seconds."""
    if local:
        from filelock import FileLock, Timeout

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(
                f"could not take {path} within {timeout:g} s: another publish or promote of {name!r} is running"
            ) from None
        try:
            yield
        finally:
            lock.release()
        return
    token = _acquire_lock_file(fs, path, name, timeout=timeout, stale_s=stale_s)
    try:
        yield
    finally:
        try:
            if json.loads(fs.cat_file(path)).get("token") == token:
                fs.rm(path)
        except (FileNotFoundError, ValueError):
            pass


def _acquire_lock_file(fs, path: str, name: str, *, timeout: float, stale_s: float) -> str:
    """Create the lock file at ``path`` (or wait for it, or break a stale one); the token it holds."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    while True:
        record = json.dumps({"token": token, "owner": whoami(), "pid": os.getpid(), "at": time.time()}).encode()
        try:
            with fs.open(path, "xb") as fh:
                fh.write(record)
            created = True
        except FileExistsError:
            created = False
        except (ValueError, NotImplementedError):
            # No exclusive create on this store: check, write, then read back below.
            created = not fs.exists(path)
            if created:
                fs.pipe_file(path, record)
        if created:
            try:
                if json.loads(fs.cat_file(path)).get("token") == token:
                    return token
            except (FileNotFoundError, ValueError):
                pass
        else:
            try:
                holder = json.loads(fs.cat_file(path))
            except (FileNotFoundError, ValueError):
                holder = None
            if holder is not None and time.time() - float(holder.get("at", 0)) > stale_s:
                fs.rm(path)  # its writer died holding it: no heartbeat refreshes a lock this old
                continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"could not take lock {fs.unstrip_protocol(path)} for {name!r} within {timeout:g} s; "
                "if no publish or promote is running, delete that file"
            )
        time.sleep(POLL_S)


__all__ = ["held", "now_iso", "pid_alive", "whoami"]
