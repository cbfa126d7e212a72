"""Generate Python gRPC stubs for every ``.proto`` under ``proto/`` into ``hcs/api/gen/``.

Run through ``make proto``. The output is deterministic for a pinned grpcio-tools, so a test
regenerates into a temporary directory and fails if the checked-in stubs differ.
Imports between generated modules are rewritten to absolute ``hcs.api.gen`` imports.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "hcs" / "api" / "gen"
_IMPORT = re.compile(r"^from ((?:[\w]+\.)*[\w]+) import (\w+_pb2)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise SystemExit("no .proto files under proto/")
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed (see messages above)")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        written = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dst = out_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_text()
            text = _IMPORT.sub(lambda m: f"from hcs.api.gen.{m.group(1)} import {m.group(2)}", text)
            dst.write_text(text)
            written.append(dst)
    for d in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        init = d / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    files = generate(out)
    print(f"generated {len(files)} files under {out}")
