"""``make demo`` (``python -m outrelay.demo``): output, exit status, nothing left behind."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DEMO = [sys.executable, "-m", "outrelay.demo"]
HEADINGS = (
    "dev PKI",
    "controller",
    "relay r1",
    "closed world: no bind rule",
    "bind rule",
    "HTTP backend and two agents",
    "closed world: no dial rule",
    "allow policy",
    "fetch a page",
    "audit records",
    "relay metrics excerpt",
    "stop everything",
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OUTRELAY_")}


def _pids(output: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"(\w+) is up: pid (\d+)", output)}


def _assert_gone(pids: dict[str, int]) -> None:
    # The demo waited for (reaped) each child, so a PID still present would be
    # one of ours left running (or, far less likely, a reused PID).
    left = {name: pid for name, pid in pids.items() if Path(f"/proc/{pid}").exists()}
    assert not left, f"still running: {left}"


def _state_dir(output: str) -> Path:
    match = re.search(r"^STATE=(.+)$", output, re.M)
    assert match, output
    return Path(match[1])


def test_demo_shows_traffic_and_stops_everything() -> None:
    start = time.monotonic()
    done = subprocess.run(DEMO, capture_output=True, text=True, env=_env(), timeout=90)
    took = time.monotonic() - start
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert took < 60
    for heading in HEADINGS:
        assert re.search(rf"^\[\d+/\d+\] {heading}", out, re.M), heading
    assert "$ outrelay policy add " in out and "--decision allow" in out
    # the closed world for providers first, then the bind rule, before any traffic
    refused = out.index("provider exited 1: ")
    assert "bind denied: outrelay://acme/agent/" in out[refused:].splitlines()[0]
    bind = out.index("$ outrelay policy add --action bind ")
    assert refused < bind < out.index("provider is up") < out.index("-> 200 OK")
    assert "rejected: 403 denied: no matching rule" in out  # before the rule
    assert "-> 200 OK" in out
    assert "| Hello from the provider's backend! You asked for /hello" in out
    audit = out.split("audit records", 1)[1].split("metrics excerpt", 1)[0]
    assert len(re.findall(r"\ballow\b", audit)) == 2 and "no matching rule" in audit
    assert re.search(r"outrelay_bytes_forwarded_total [1-9]", out)
    pids = _pids(out)
    assert set(pids) == {"controller", "relay", "provider", "consumer"}
    for name, pid in pids.items():
        assert f"{name} (pid {pid}): exit 0" in out
    _assert_gone(pids)
    assert not _state_dir(out).exists()
    assert "no process left running" in out


def _lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """Lines of ``proc``'s stdout as they come; the thread ends at EOF."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


@pytest.mark.parametrize(
    ("args", "wait_for", "status"),
    [
        (["--keep"], "press Ctrl-C", 0),  # the normal end of --keep
        ([], "relay is up", 128 + signal.SIGINT),  # in the middle of the startup
    ],
    ids=["keep", "during-startup"],
)
def test_ctrl_c_leaves_nothing_behind(args: list[str], wait_for: str, status: int) -> None:
    seen: list[str] = []
    with subprocess.Popen(
        [*DEMO, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
    ) as proc:
        try:
            lines, pump = _lines(proc)
            deadline = time.monotonic() + 60
            while not seen or wait_for not in seen[-1]:
                seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
            pump.join(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    while not lines.empty():
        seen.append(lines.get_nowait())
    out = "".join(seen)
    assert code == status, out
    pids = _pids(out)
    assert "controller" in pids and "relay" in pids
    assert "stop everything" in out
    _assert_gone(pids)
    assert not _state_dir(out).exists()


def test_failed_step_exits_1_with_one_line_reason(tmp_path: Path) -> None:
    # An invalid tenant makes the first step (`outrelay pki dev`) fail.
    code = "import sys, outrelay.demo as d; d.TENANT = 'Not_A_Label'; sys.exit(d.main())"
    argv = [sys.executable, "-c", code, "--state-dir", str(tmp_path / "state")]
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 1
    reason = done.stderr.strip().splitlines()
    assert len(reason) == 1 and reason[0].startswith("Demo failed after "), done.stderr
    assert "`outrelay pki dev` exited 2: " in reason[0]
    assert "stop everything" in done.stdout
    assert (tmp_path / "state").is_dir()  # --state-dir is kept


def test_state_dir_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "controller.db").write_bytes(b"")
    argv = [*DEMO, "--state-dir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 2 and "is not empty" in done.stderr
