"""``outrelay.childproc``: failures at startup, the ready file, the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from outrelay.childproc import ComponentProcess, NotReadyError, child_env


def test_child_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    proc = ComponentProcess("bad", ["no-such-command"], tmp_path)
    with pytest.raises(NotReadyError, match=r"^bad exited 2:\n") as info:
        proc.start(timeout=30)
    assert info.value.returncode == 2
    assert "no-such-command" in str(info.value)
    assert proc.args == ["no-such-command", "--ready-file", str(tmp_path / "bad.ready.json")]
    assert not proc.alive()
    assert proc.stop() == 2


def test_not_started(tmp_path: Path) -> None:
    proc = ComponentProcess("idle", ["relay"], tmp_path)
    assert proc.stop() == 0
    proc.kill()
    proc.signal(15)
    assert proc.log() == ""
    with pytest.raises(RuntimeError, match="idle was not started"):
        _ = proc.pid


def test_half_written_ready_file_is_not_ready(tmp_path: Path) -> None:
    proc = ComponentProcess("x", [], tmp_path)
    proc.ready_file.write_text('{"grpc": "127.0.')
    assert proc._read_ready() is None
    proc.ready_file.write_text('{"grpc": "127.0.0.1:1"}')
    assert proc._read_ready() == {"grpc": "127.0.0.1:1"}


def test_child_env_drops_outrelay_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTRELAY_LOG_LEVEL", "debug")
    monkeypatch.setenv("OUTRELAY_NO_EXTENSIONS", "1")
    env = child_env()
    assert "OUTRELAY_LOG_LEVEL" not in env and "OUTRELAY_NO_EXTENSIONS" not in env
    assert child_env(keep={"OUTRELAY_NO_EXTENSIONS"})["OUTRELAY_NO_EXTENSIONS"] == "1"
