"""Reading and writing a local store without following symbolic links.

A link planted in the store (``audit.jsonl`` pointing at a file elsewhere, ``versions/`` pointing at
another folder) would make a write append, replace or delete outside the store, and a read trust
bytes that are not the store's. So on a local filesystem every path below the store's root is
checked with ``lstat`` before it is used, files are opened with ``O_NOFOLLOW``, and a link is refused
with :class:`~modft_utils.store.records.StoreLinkError` naming it. The root itself may be a link (a
store kept on another disk). Object stores have no links; their paths are used as they are.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from modft_utils.store.records import RegistryError, StoreLinkError, link_issue

# Not every OS has it (Windows); there the lstat check below is what refuses a link.
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def link_error(path: str) -> StoreLinkError:
    return StoreLinkError(
        f"{path}: {link_issue(path)} inside the store; the store neither reads, writes nor deletes through a "
        "link: put the real file or folder in its place, or remove the link"
    )


def check_no_link(root: str, path: str) -> None:
    """Raise StoreLinkError when ``path``, or a folder between ``root`` and it, is a symbolic link.

    Parts that do not exist yet end the check: nothing below them can be a link.
    """
    rel = posixpath.relpath(path, root)
    if rel == "." or rel.startswith("../"):
        return
    current = root
    for part in rel.split("/"):
        current = posixpath.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(mode):
            raise link_error(current)


def read_file(root: str, path: str) -> bytes:
    """The bytes of the store file at ``path``; FileNotFoundError when absent, RegistryError when not a file."""
    check_no_link(root, path)
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
    except OSError as err:
        if err.errno == errno.ELOOP:  # made a link between the check and the open
            raise link_error(path) from None
        if err.errno == errno.EISDIR:
            raise RegistryError(f"{path}: a folder, not a file: move it out of the store") from None
        if err.errno == errno.ENOTDIR:  # a file where a folder on the way should be: nothing is there
            raise FileNotFoundError(errno.ENOENT, "No such file", path) from None
        raise
    if stat.S_ISDIR(os.fstat(fd).st_mode):  # opening a folder read-only succeeds; reading it does not
        os.close(fd)
        raise RegistryError(f"{path}: a folder, not a file: move it out of the store")
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def open_append(root: str, path: str) -> int:
    """A descriptor for appending to the store file at ``path`` (created if missing), never through a link."""
    check_no_link(root, path)
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise link_error(path) from None
        if err.errno == errno.EISDIR:
            raise RegistryError(f"{path}: a folder, not a file: move it out of the store") from None
        raise


def write_new(root: str, path: str, data: bytes) -> None:
    """Create ``path`` (which must not exist) holding ``data``, synced to disk."""
    check_no_link(root, posixpath.dirname(path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


__all__ = ["O_NOFOLLOW", "check_no_link", "link_error", "open_append", "read_file", "write_new"]
