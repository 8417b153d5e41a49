"""Regenerate the protobuf and gRPC Python modules from proto/.

Usage: ``python proto/generate.py OUTDIR`` (``make proto`` passes ``src``).

Every ``.proto`` under this script's directory is compiled, in sorted order,
with this directory as the import root, so ``proto/outrelay/proto/x.proto``
becomes ``OUTDIR/outrelay/proto/x_pb2.py``, ``x_pb2.pyi`` and
``x_pb2_grpc.py``. Stale generated files in the target package are removed
first so a deleted ``.proto`` leaves nothing behind; hand-written files
(``__init__.py``) are never touched. The output depends only on the sources
and the pinned grpcio-tools version, not on the working directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_sources() -> list[Path]:
    """Return every ``.proto`` file under the import root, sorted."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def remove_stale(outdir: Path, sources: list[Path]) -> None:
    """Delete generated modules in the packages the sources compile into."""
    for package in {outdir / src.parent.relative_to(PROTO_ROOT) for src in sources}:
        if not package.is_dir():
            continue
        for path in package.iterdir():
            if path.name.endswith(GENERATED_SUFFIXES):
                path.unlink()


def generate(outdir: Path) -> None:
    """Compile every source into ``outdir``.

    Raises:
        SystemExit: with a one-line message if there is nothing to compile
            or protoc reports an error (its diagnostics go to stderr).
    """
    from grpc_tools import protoc  # dev dependency; imported late for a clear error

    sources = proto_sources()
    if not sources:
        raise SystemExit(f"generate.py: no .proto files under {PROTO_ROOT}")
    outdir.mkdir(parents=True, exist_ok=True)
    remove_stale(outdir, sources)
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={outdir}",
        f"--pyi_out={outdir}",
        f"--grpc_python_out={outdir}",
        *(str(src) for src in sources),
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"generate.py: protoc failed with status {status}")


def main(argv: list[str]) -> int:
    """Command-line entry point; returns the process exit status."""
    if len(argv) != 1:
        print("usage: generate.py OUTDIR", file=sys.stderr)
        return 2
    generate(Path(argv[0]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
