#!/usr/bin/env python3
"""Print a POSIX sh script that turns a kind node into a simulated accelerator node.

    python3 e2e/kind/sim_devices.py driver/profiles/a100-80g-nvlink-8.json | docker exec -i NODE sh

The script (run as root inside the node container, which has no Python) creates:
  * the device nodes each vendor's backend reports for the profile's devices (hcs/devices/*.py) plus
    the vendor's control nodes, as character devices 1:3 (the null device: harmless to open, allowed by
    the device cgroup) -- the simulated libraries never open them, the container runtime only needs them
    to exist to pass them through;
  * the driver directories the vendor injection mounts into containers (hcs/devices/injection.py:
    /usr/local/Ascend/driver, /usr/local/dcmi, /usr/local/bin/npu-smi, /opt/hyhal, /usr/bin/cnmon),
    holding copies of the simulated libraries from SIM_LIB_DIR (copies, not links: they are
    bind-mounted into containers that do not have SIM_LIB_DIR);
  * the profile at <sim-dir>/profile.json and an empty fault file next to it
    (append directives to it to inject faults, see driver/README.md).

The profile file itself is copied by run.sh (docker cp) to <sim-dir>/profile.json before this runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

VENDORS = ("nvidia", "ascend", "hygon", "cambricon")

#: control nodes every device of the vendor needs (hcs/devices/injection.py)
CONTROL_NODES: dict[str, tuple[str, ...]] = {
    "nvidia": ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"),
    "ascend": ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"),
    "hygon": ("/dev/kfd", "/dev/mkfd"),
    "cambricon": ("/dev/cambricon_ctl",),
}

#: simulated libraries placed where the vendor's runtime lives on a real node: dir -> library names
DRIVER_DIRS: dict[str, dict[str, tuple[str, ...]]] = {
    "ascend": {
        "/usr/local/Ascend/driver/lib64": ("libascendcl.so", "libdcmi.so"),
        "/usr/local/Ascend/driver/lib64/driver": ("libdcmi.so",),
        "/usr/local/dcmi": ("libdcmi.so",),
    },
    "hygon": {"/opt/hyhal/lib": ("librocm_smi64.so", "librocm_smi64.so.2", "libamdhip64.so")},
    "cambricon": {"/usr/local/neuware/lib64": ("libcndev.so", "libcnrt.so")},
    "nvidia": {},
}

#: vendor tools the injection mounts (stubs that say they are simulated)
TOOLS: dict[str, tuple[str, ...]] = {
    "ascend": ("/usr/local/bin/npu-smi",), "cambricon": ("/usr/bin/cnmon",), "nvidia": ("/usr/bin/nvidia-smi",),
    "hygon": (),
}


def device_nodes(vendor: str, index: int, device: dict[str, object]) -> list[str]:
    """Per-device nodes, named as the backends name them."""
    if vendor == "nvidia":
        return [f"/dev/nvidia{device.get('minor', index)}"]
    if vendor == "ascend":
        return [f"/dev/davinci{index}"]
    if vendor == "hygon":
        return [f"/dev/dri/card{index}", f"/dev/dri/renderD{128 + index}"]
    return [f"/dev/cambricon_dev{index}"]


def load_profile(path: Path) -> list[dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"sim_devices: {path}: cannot read the node profile ({exc})") from exc
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list) or not devices:
        raise SystemExit(f"sim_devices: {path}: field 'devices' must be a non-empty list (see driver/README.md)")
    for i, d in enumerate(devices):
        if not isinstance(d, dict) or d.get("vendor") not in VENDORS:
            raise SystemExit(f"sim_devices: {path}: devices[{i}].vendor must be one of {', '.join(VENDORS)}")
    return devices


def plan(devices: list[dict[str, object]], root: str = "") -> tuple[list[str], dict[str, tuple[str, ...]],
                                                                       list[str]]:
    """(device node paths, driver dir -> libraries, tool paths) for a profile; paths under ``root``."""
    nodes: list[str] = []
    counters = dict.fromkeys(VENDORS, 0)
    vendors: list[str] = []
    for d in devices:
        vendor = str(d["vendor"])
        if vendor not in vendors:
            vendors.append(vendor)
        nodes += device_nodes(vendor, counters[vendor], d)
        counters[vendor] += 1
    for vendor in vendors:
        nodes += CONTROL_NODES[vendor]
    dirs = {root + k: v for vendor in vendors for k, v in DRIVER_DIRS[vendor].items()}
    tools = [root + t for vendor in vendors for t in TOOLS[vendor]]
    return [root + n for n in dict.fromkeys(nodes)], dirs, tools


def script(devices: list[dict[str, object]], *, root: str, lib_dir: str, sim_dir: str) -> str:
    nodes, dirs, tools = plan(devices, root)
    q = shlex.quote
    lines = ["set -eu", f"# {len(devices)} simulated devices"]
    for n in nodes:
        parent = n.rsplit("/", 1)[0]
        lines.append(f"mkdir -p {q(parent)}; [ -e {q(n)} ] || mknod -m 666 {q(n)} c 1 3")
    for d, libs in dirs.items():
        lines.append(f"mkdir -p {q(d)}")
        for lib in libs:
            lines.append(f"cp -f {q(lib_dir + '/' + lib)} {q(d + '/' + lib)}")
    for t in tools:
        lines.append(f"mkdir -p {q(t.rsplit('/', 1)[0])}")
        lines.append(f"printf '#!/bin/sh\\necho \"simulated node: $(basename \"$0\") is not available\"\\n' > {q(t)}")
        lines.append(f"chmod 0755 {q(t)}")
    sim = root + sim_dir
    lines.append(f"mkdir -p {q(sim)}; touch {q(sim + '/profile.json.faults')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path, help="node profile JSON (driver/profiles/*.json)")
    p.add_argument("--root", default="", help="prefix for every path (tests); default: the node's /")
    p.add_argument("--lib-dir", default="/opt/hcs/driver/lib", help="simulated libraries inside the node")
    p.add_argument("--sim-dir", default="/opt/hcs/sim", help="nodeAgent.simulated.hostDir of the chart")
    args = p.parse_args(argv)
    sys.stdout.write(script(load_profile(args.profile), root=args.root.rstrip("/"), lib_dir=args.lib_dir,
                            sim_dir=args.sim_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
