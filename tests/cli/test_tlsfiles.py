"""``outrelay.tlsfiles``: TLS files are read and checked before use (dev-bundle files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from outrelay.errors import InputError
from outrelay.tlsfiles import read_tls_files


def test_a_matching_bundle_is_read(dev_bundle: Path) -> None:
    files = read_tls_files(
        dev_bundle / "relay-r1.crt", dev_bundle / "relay-r1.key", dev_bundle / "ca.crt"
    )
    assert files.cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in files.key


@pytest.mark.parametrize(
    ("cert", "key", "ca", "message"),
    [
        ("relay-r1.crt", "relay-r1.key", "nope.crt", r"--ca .*nope.crt: No such file or directory"),
        ("relay-r1.key", "relay-r1.key", "ca.crt", r"--cert .*: no PEM certificate in the file"),
        ("relay-r1.crt", "relay-r1.crt", "ca.crt", r"--key .*: not an unencrypted PEM private key"),
        ("relay-r1.crt", "admin-admin.key", "ca.crt", r"does not belong to the certificate"),
        ("relay-r1.crt", "relay-r1.key", ".", r"--ca .*: is a directory"),
    ],
)
def test_each_problem_names_the_flag_and_file(
    dev_bundle: Path, cert: str, key: str, ca: str, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        read_tls_files(dev_bundle / cert, dev_bundle / key, dev_bundle / ca)


def test_unset_flag_is_required() -> None:
    with pytest.raises(InputError, match="--cert is required"):
        read_tls_files("", "k", "c")


def test_grpc_core_logging_is_silenced_before_grpc_is_imported() -> None:
    code = (
        "import os, sys\n"
        "from outrelay.observe.log import grpc_core_logging\n"
        "grpc_core_logging(debug=False)\n"
        "quiet = os.environ['GRPC_VERBOSITY'], os.environ['GRPC_TRACE']\n"
        "grpc_core_logging(debug=True)\n"
        "debug = os.environ.get('GRPC_VERBOSITY'), os.environ.get('GRPC_TRACE')\n"
        "import grpc\n"
        "grpc_core_logging(debug=False)\n"
        "late = os.environ.get('GRPC_VERBOSITY')\n"
        "print(quiet, debug, late)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "GRPC_TRACE": "http"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # quiet, then the user's own values back for debug, untouched once grpc is loaded
    assert done.stdout.strip() == "('NONE', '') (None, 'http') None"
