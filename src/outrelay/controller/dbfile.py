"""The controller's database as a file: the start-up check and the online backup.

No table SQL here (that is ``store.py``): only whole-file operations through
APSW.

* :func:`quick_check` runs ``PRAGMA quick_check`` (every page, record and
  b-tree structure; unlike ``integrity_check`` it does not cross-check index
  contents, which costs ~9x more: bench/controller_check.py measured 0.40 s
  against 3.47 s on a 281 MiB file with 1M audit rows). ``Store`` runs it at
  open, so a corrupt file is refused at start instead of served.
* :func:`backup` copies a live database with SQLite's online backup API in
  one step (one read transaction: a consistent snapshot while the
  controller keeps writing, WAL readers do not block it) into a temporary
  file next to the target, checks the copy, and renames it into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from outrelay.errors import InputError, OutRelayError

#: milliseconds a backup waits for a lock held by the running controller
BUSY_TIMEOUT_MS = 5000
#: problems quoted from a failed check
MAX_PROBLEMS = 3


class BackupError(OutRelayError):
    """The backup could not be made (I/O error, the copy failed its check)."""


def quick_check(db: apsw.Connection) -> list[str]:
    """The problems ``PRAGMA quick_check`` reports (empty: the file is sound).

    Raises apsw.Error if SQLite cannot even read the file.
    """
    rows = [
        " ".join(str(row[0]).split()) for row in db.execute(f"PRAGMA quick_check({MAX_PROBLEMS})")
    ]
    return [] if rows == ["ok"] else rows


def _open_source(path: Path) -> apsw.Connection:
    if not path.is_file():
        raise InputError(f"--db {path}: no such file")
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
        db.setbusytimeout(BUSY_TIMEOUT_MS)
        db.execute("SELECT count(*) FROM sqlite_schema").fetchall()
    except apsw.Error as exc:
        raise BackupError(f"--db {path}: cannot read it as SQLite: {exc}") from None
    return db


def _check_target(source: Path, target: Path, force: bool) -> None:
    if target.exists() and target.resolve() == source.resolve():
        raise InputError(f"--to {target}: is the database itself")
    if target.is_dir():
        raise InputError(f"--to {target}: is a directory")
    if target.exists() and not force:
        raise InputError(f"--to {target}: exists; use --force to replace it")
    if not target.parent.is_dir():
        raise InputError(f"--to {target}: no such directory {target.parent}")


def backup(source: str | Path, target: str | Path, *, force: bool = False) -> int:
    """Copy the database ``source`` to ``target`` while it may be in use; return the bytes.

    The copy is written to ``<target>.tmp-<pid>``, switched to a single
    self-contained file (``journal_mode=DELETE``; a controller started on it
    switches back to WAL), passed through :func:`quick_check`, synced and
    renamed over ``target``.

    Raises:
        InputError: ``source`` missing, ``target`` exists (without ``force``)
            or is not writable where it is.
        BackupError: SQLite or the file system failed, or the copy is corrupt.
    """
    source, target = Path(source), Path(target)
    _check_target(source, target, force)
    src = _open_source(source)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        _copy(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise BackupError(f"--to {target}: {exc.strerror or exc}") from None
    finally:
        src.close()
        for leftover in (tmp, Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
    return target.stat().st_size


def _copy(src: apsw.Connection, tmp: Path) -> None:
    tmp.unlink(missing_ok=True)
    try:
        dst = apsw.Connection(str(tmp))
    except apsw.Error as exc:
        raise BackupError(f"cannot create {tmp}: {exc}") from None
    try:
        with dst.backup("main", src, "main") as step:
            step.step(-1)  # everything in one read transaction: a consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE").fetchall()
        problems = quick_check(dst)
        if problems:
            raise BackupError(f"the copy failed quick_check: {'; '.join(problems)}")
    except apsw.Error as exc:
        raise BackupError(f"backup failed: {exc}") from None
    finally:
        dst.close()
