#!/usr/bin/env python3
"""Real-GPU check of topology discovery: the islands ``hcs inspect`` reads through NVML agree with the
NVLink matrix of ``nvidia-smi topo -m`` (NV# = GPUs joined by NVLink, directly or through NVSwitch).

Prints one JSON object: {"islands": [...], "nvlink_pairs_smi": n, "nvlink_pairs_hcs": n, "pass": bool};
"skipped" when ``hcs`` cannot run here (its Python dependencies are not installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def hcs_inventory() -> dict[str, Any] | str:
    venv = REPO / ".venv" / "bin" / "hcs"
    cmd = [str(venv)] if venv.exists() else [sys.executable, "-c", "import sys; from hcs.cli import main; "
                                              "sys.exit(main())"]
    p = subprocess.run([*cmd, "inspect", "--output", "json"], capture_output=True, text=True, timeout=120,
                       check=False, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if p.returncode != 0:
        return "skipped: hcs inspect failed here: " + (p.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def smi_nvlink_pairs() -> set[tuple[int, int]] | str:
    if shutil.which("nvidia-smi") is None:
        return "skipped: no nvidia-smi"
    p = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=60, check=False)
    pairs: set[tuple[int, int]] = set()
    for line in p.stdout.splitlines():
        m = re.match(r"^\s*GPU(\d+)\s+(.*)$", line)
        if not m:
            continue
        for j, cell in enumerate(m.group(2).split()):
            if re.fullmatch(r"NV\d+", cell) and j != int(m.group(1)):
                pairs.add(tuple(sorted((int(m.group(1)), j))))  # type: ignore[arg-type]
    return pairs


def main() -> int:
    inv, smi = hcs_inventory(), smi_nvlink_pairs()
    if isinstance(inv, str) or isinstance(smi, str):
        print(json.dumps({"topology": inv if isinstance(inv, str) else smi}))
        return 0
    islands = [i["members"] for i in inv["islands"] if i["vendor"] == "nvidia"]
    index = {d["key"]: d["index"] for d in inv["devices"]}
    ours = {tuple(sorted((index[a], index[b]))) for members in islands if len(members) > 1
            for a in members for b in members if index[a] < index[b]}
    print(json.dumps({"islands": islands, "nvlink_pairs_smi": len(smi), "nvlink_pairs_hcs": len(ours),
                      "pass": ours == smi}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
