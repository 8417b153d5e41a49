"""The baseline forwarder in bench/ stays runnable (the relay benchmark compares against it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "quic_forwarder.py"

pytestmark = pytest.mark.dataplane


def test_help() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--port" in out.stdout


def test_self_check_forwards_one_mib() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--self-check", "--size-mib", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("self-check ok: 1 MiB forwarded")
