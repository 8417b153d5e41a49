"""Writing key material: private files 0600, directories 0700, atomic rename.

A file is written to a temporary name in its final directory, flushed and
renamed over the target, so a reader never sees half a key and a crash never
leaves one. The mode is set when the temporary file is created (not after),
so a private key is never readable by others, not even for a moment.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

PRIVATE_FILE = 0o600
PUBLIC_FILE = 0o644
PRIVATE_DIR = 0o700


def ensure_dir(path: str | os.PathLike[str], mode: int = PRIVATE_DIR) -> Path:
    """Create ``path`` (and parents) if missing; a directory we create gets ``mode``.

    An existing directory keeps its mode (it may be a shared one like ``.``).
    """
    directory = Path(path)
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask
    return directory


def write_file(
    path: str | os.PathLike[str], data: bytes | str, mode: int, *, overwrite: bool = True
) -> Path:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OSError: the directory is missing or not writable.
    """
    target = Path(path)
    if not overwrite and target.exists():
        raise FileExistsError(f"{target} already exists")
    payload = data.encode() if isinstance(data, str) else data
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # os.open's mode is filtered by the umask
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_private(
    path: str | os.PathLike[str], data: bytes | str, *, overwrite: bool = True
) -> Path:
    """Write a private key (mode 0600)."""
    return write_file(path, data, PRIVATE_FILE, overwrite=overwrite)


def write_public(
    path: str | os.PathLike[str], data: bytes | str, *, overwrite: bool = True
) -> Path:
    """Write a certificate or other public file (mode 0644)."""
    return write_file(path, data, PUBLIC_FILE, overwrite=overwrite)
