"""doit's own database (.doit.db): set aside when damaged, sealed when a run leaves it whole.

doit stops every run on a damaged database until someone deletes it; kiln moves it aside and
goes on, since the store turns the lost up-to-date state into cache hits, not compiles.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

from ..cache.files import atomic_write, read_only


def identity(path: Path) -> list | None:
    """(inode, size, mtime_ns) of a file, None when absent: any write changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]



def seal(dep_file: Path, seal: Path) -> None:
    """Remember the database as doit left it at the end of a run (the reporter's last step:
    doit has closed it), so the next run need not decode every row to trust it."""
    text = json.dumps(identity(dep_file))
    with contextlib.suppress(OSError):
        if seal.read_text() == text:
            return   # (a no-op run leaves the database as it was: nothing to write)
    with contextlib.suppress(OSError):
        atomic_write(seal, text.encode())



def set_aside_if_damaged(dep_file: Path, seal: Path | None = None) -> str | None:
    """doit stops every run (exit 3) on a damaged database until someone deletes it. Move it
    aside instead: the store turns the lost up-to-date state into cache hits, not compiles.
    Returns the warning, or None when the file is absent or sound. In read-only mode (`doit
    explain`) it stays where it is: explain reads it as empty, as the run will find it."""
    verdict = damage(dep_file, seal)
    if verdict is None:
        return None
    if read_only():
        return (f"{dep_file} is damaged ({verdict}); read as empty, as the next run will "
                "(it moves it aside)")
    return _set_aside(dep_file, verdict)


def damage(dep_file: Path, seal: Path | None = None) -> str | None:
    """What is wrong with the database (sqlite's words), or None when it is absent, sound, or
    busy in another doit. Reads only. Without a seal every row is decoded."""
    now = identity(dep_file)
    if now is None:
        return None
    try:
        sealed = json.loads(seal.read_text()) if seal else None
    except (OSError, ValueError):
        sealed = None
    if sealed == now:  # the file the last run's doit left whole, untouched since: no
        return None     # quick_check either (it reads every page, on every no-op run)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{dep_file}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            has_table = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'doit'").fetchone()
            # sqlite keeps no checksums: a flipped byte in a row shows only when doit decodes
            # it (the file is not the one the last run's doit left: see above)
            for (data,) in db.execute("SELECT task_data FROM doit") if has_table else ():
                json.loads(data)
    except sqlite3.OperationalError as err:   # locked or busy (another doit): not damage
        return None if "locked" in str(err) or "busy" in str(err) else str(err)
    except (sqlite3.Error, ValueError, TypeError) as err:
        verdict = str(err)
    return None if verdict == "ok" else verdict


def _set_aside(dep_file: Path, verdict: str) -> str:
    aside = dep_file.with_name(dep_file.name + ".damaged")
    os.replace(dep_file, aside)
    return (f"{dep_file} was damaged ({verdict}); moved it to {aside.name} and went on: "
            "stages are restored from the cache")

