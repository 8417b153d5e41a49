"""The controller database as a file: quick_check at open, online backup (real SQLite files)."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from outrelay.controller.dbfile import BackupError, backup, quick_check
from outrelay.controller.store import CorruptStoreError, Store
from outrelay.errors import InputError
from outrelay.policy import Rule, Verdict


def filled(path: Path, rules: int = 50) -> Path:
    """A store with ``rules`` policy rules, closed; bigger than 12 KiB."""
    store = Store(str(path))
    try:
        for i in range(rules):
            rule = Rule(f"rule-{i:04d}", "acme", "*", f"svc-{i}", verdict=Verdict.ALLOW)
            store.add_policy(rule)
    finally:
        store.close()
    assert path.stat().st_size > 12 * 1024
    return path


def overwrite(path: Path, offset: int = 8192, size: int = 4096) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xa5" * size)


def test_store_refuses_a_file_with_overwritten_pages(tmp_path: Path) -> None:
    db = filled(tmp_path / "c.db")
    overwrite(db)
    with pytest.raises(CorruptStoreError) as err:
        Store(str(db))
    message = str(err.value)
    assert str(db) in message and "is corrupt" in message and "backup" in message
    assert "\n" not in message


def test_store_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    db.write_bytes(b"not a database at all" * 1000)
    with pytest.raises(CorruptStoreError, match="is corrupt"):
        Store(str(db))
    assert db.read_bytes() == b"not a database at all" * 1000  # nothing was written to it


def test_quick_check_reports_problems_of_a_damaged_file(tmp_path: Path) -> None:
    db = filled(tmp_path / "c.db")
    overwrite(db)
    conn = apsw.Connection(str(db))
    try:
        problems = quick_check(conn)
    except apsw.CorruptError:
        problems = ["corrupt"]
    finally:
        conn.close()
    assert problems


def test_backup_copies_every_rule_into_one_self_contained_file(tmp_path: Path) -> None:
    db = filled(tmp_path / "c.db")
    live = Store(str(db))  # open: the copy is taken from a database in use
    try:
        size = backup(db, tmp_path / "copy.db")
    finally:
        live.close()
    copy = tmp_path / "copy.db"
    assert size == copy.stat().st_size
    assert not list(tmp_path.glob("copy.db*-*")), "no temporary or -wal/-journal file left"
    restored = Store(str(copy))
    try:
        assert len(restored.list_policies("acme")) == 50
        assert restored.integrity_check() == "ok"
    finally:
        restored.close()


def test_backup_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    db = filled(tmp_path / "c.db")
    target = tmp_path / "copy.db"
    target.write_bytes(b"precious")
    with pytest.raises(InputError, match="exists; use --force"):
        backup(db, target)
    assert target.read_bytes() == b"precious"
    backup(db, target, force=True)
    assert target.read_bytes().startswith(b"SQLite format 3\x00")


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("missing.db", "copy.db", "--db .*missing.db: no such file"),
        ("c.db", "c.db", "is the database itself"),
        ("c.db", "nodir/copy.db", "no such directory"),
        ("c.db", ".", "is a directory"),
    ],
)
def test_backup_usage_errors(tmp_path: Path, source: str, target: str, message: str) -> None:
    filled(tmp_path / "c.db")
    with pytest.raises(InputError, match=message):
        backup(tmp_path / source, tmp_path / target)


def test_backup_of_a_corrupt_database_fails_and_leaves_no_file(tmp_path: Path) -> None:
    db = filled(tmp_path / "c.db")
    overwrite(db)
    with pytest.raises(BackupError):
        backup(db, tmp_path / "copy.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.db"]
