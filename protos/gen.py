"""Generate the Python stubs for protos/keyspan/v1/*.proto, or check they are current.

    python -m protos.gen protos           # write *_pb2.py, *_pb2.pyi, *_pb2_grpc.py beside the protos
    python -m protos.gen --check protos   # regenerate into a temp dir and diff; exit 1 when stale

The stubs are committed so that a user installing keyspan needs no grpcio-tools.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc


def generate(proto_root: Path, out: Path) -> list[Path]:
    protos = sorted((proto_root / "keyspan" / "v1").glob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out / "keyspan" / "v1").iterdir() if "_pb2" in p.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("proto_root", type=Path)
    parser.add_argument("--check", action="store_true", help="diff against fresh stubs")
    args = parser.parse_args()
    if not args.check:
        generate(args.proto_root, args.proto_root)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(args.proto_root, Path(tmp))
        stale = [
            p.name
            for p in fresh
            if not (args.proto_root / "keyspan" / "v1" / p.name).exists()
            or not filecmp.cmp(p, args.proto_root / "keyspan" / "v1" / p.name, shallow=False)
        ]
    if stale:
        print(f"stale stubs (run `make proto`): {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"stubs current: {len(fresh)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
