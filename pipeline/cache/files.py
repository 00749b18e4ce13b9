"""Files that appear whole or not at all: temp file beside the final name, then rename.

Every file kiln writes under build/ or cache/ goes through here, so a killed run leaves no
half-written file; a write that the disk refuses is described with its path and errno.

Here too is the read-only switch (`doit explain` sets it, before dodo.py loads): each writer
kiln has checks read_only() and leaves its write out; a write that still comes here is
refused.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

# errors that mean "this disk will not take the write", not "this entry is bad"
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}

_read_only = False


def set_read_only(on: bool = True) -> None:
    """Make this process write nothing of kiln's: not build/, not the cache, not .doit.db.
    The probe cache, the plan memo, the failed-run record, the .doit.db repair, the store
    (no last-use mark, no discarding a damaged entry) and the touched-output refresh check
    read_only(); any other write that reaches this module raises an OSError (EROFS)."""
    global _read_only
    _read_only = on


def read_only() -> bool:
    """Whether this process writes nothing (see set_read_only)."""
    return _read_only



def stat_of(path: str | Path) -> list | None:
    """[size, mtime_ns] of a file or directory, None when absent: the cheap "has it changed"
    every memo of kiln's compares (plan, facts, record, a key's inputs, a probed executable)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def file_identity(path: str | Path) -> list | None:
    """[inode, size] of a file, None when absent: what replacing it (every write here is a
    rename) or removing it changes, and reading it or marking its last use (utime) does not."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size]


def _file_mode() -> int:
    # mkstemp creates 0600 files; kiln's files get what open() would give: 0666 less the umask
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask



FILE_MODE = _file_mode()



MKSTEMP_TRIES = 100


def _mkstemp(directory: Path, name: str) -> tuple[int, str]:
    """A fresh temp file next to its final name, with the umask's mode.

    A concurrent prune may remove an empty directory between mkdir and mkstemp, so the pair
    is retried (prune only removes directories that are empty at that instant). A prune
    looping over the same directories can win that race several times in a row (5 tries
    were seen to run out in the test that interleaves the two): 100 cost nothing."""
    if _read_only:
        raise OSError(errno.EROFS, "kiln writes nothing in this process (read-only mode)",
                      str(directory / name))
    for attempt in range(MKSTEMP_TRIES):
        try:
            # mkdir itself raises FileExistsError when the directory vanishes mid-call
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
            break
        except (FileNotFoundError, FileExistsError):
            if attempt == MKSTEMP_TRIES - 1:
                raise
    os.fchmod(fd, FILE_MODE)
    return fd, tmp



def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = _mkstemp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def atomic_copy(src: Path, dst: Path) -> None:
    fd, tmp = _mkstemp(dst.parent, dst.name)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def write_verified(dst: Path, chunks, digest: str) -> bool:
    """Write chunks to dst through a temp file, hashing as they pass: dst appears only when
    the bytes match digest (a restore from the store, a download from the remote)."""
    fd, tmp = _mkstemp(dst.parent, dst.name)
    try:
        hasher = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != digest:
            Path(tmp).unlink()
            return False
        os.replace(tmp, dst)
        return True
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def describe_os_error(err: OSError, where: Path | None = None) -> str:
    """'cannot write build/x: No space left on device (ENOSPC)': the path and the errno (a
    failed write() names no file: where says which directory it was writing in). A copy
    or rename names its source first and what it wrote second: the second is said."""
    place = err.filename2 or err.filename or (f"in {where}" if where else "")
    return f"cannot write {place}: {errno_text(err)}".replace("write :", "write:")


def errno_text(err: OSError) -> str:
    """'No space left on device (ENOSPC)': why the disk refused, without the path."""
    return f"{err.strerror or err} ({errno.errorcode.get(err.errno, str(err.errno))})"

