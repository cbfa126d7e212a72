"""``hcs inspect``: print this node's compute fingerprint."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from hcs.config import load_config, section
from hcs.devices.catalog import default_catalog
from hcs.devices.inventory import Inventory, discover
from hcs.devices.model import HEALTHY_THRESHOLD, Device
from hcs.devices.simhost import simulated_sysfs
from hcs.errors import ConfigError
from hcs.quantity import human_bytes

#: the simulated node profiles shipped with the source tree (``make dev`` builds their drivers).
PROFILES_DIR = Path(__file__).resolve().parents[2] / "driver" / "profiles"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect", help="discover this node's accelerators and print its compute fingerprint",
        description="Discover NVIDIA, Ascend, Hygon and Cambricon devices through each vendor's management "
        "library and print the node's compute fingerprint (devices, islands, health). Without accelerators, "
        "try a simulated node: --profile a100-80g-nvlink-8 (see --list-profiles).",
    )
    p.add_argument("--output", "-o", choices=("table", "json", "yaml"), default="table")
    p.add_argument("--profile", metavar="NAME|FILE",
                   help="inspect a simulated node instead of this machine: a name from --list-profiles "
                   "(e.g. a100-80g-nvlink-8) or a profile JSON file (sets HCS_SIM_PROFILE)")
    p.add_argument("--list-profiles", action="store_true", help="list the simulated node profiles and exit")
    p.add_argument("--config", help="HCS YAML config (its exchangeRates section overrides the defaults)")
    p.set_defaults(func=run)


def profile_names() -> list[str]:
    return sorted(f.stem for f in PROFILES_DIR.glob("*.json"))


def resolve_profile(value: str) -> Path:
    """A bare profile name (``a100-80g-nvlink-8``, with or without ``.json``) or a path to a file."""
    path = Path(value)
    if path.is_file():
        return path
    bare = PROFILES_DIR / (value if value.endswith(".json") else f"{value}.json")
    if "/" not in value and bare.is_file():
        return bare
    names = profile_names()
    hint = f"one of: {', '.join(names)}" if names else "a JSON file (format: driver/README.md)"
    raise ConfigError(f"--profile {value!r}: no such profile or file; use {hint} (hcs inspect --list-profiles)")


def list_profiles() -> str:
    lines = [f"Simulated node profiles (in {PROFILES_DIR}); use: hcs inspect --profile NAME"]
    for name in profile_names():
        try:
            data = json.loads((PROFILES_DIR / f"{name}.json").read_text())
            desc = str(data.get("description", "")) if isinstance(data, dict) else ""
        except (OSError, ValueError):
            desc = "(unreadable)"
        lines.append(f"  {name:<24} {desc}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.list_profiles:
        print(list_profiles())
        return 0
    if args.profile:
        profile = resolve_profile(args.profile)
        os.environ["HCS_SIM_PROFILE"] = str(profile)
        os.environ.setdefault("HCS_HOST_SYSFS", str(simulated_sysfs(profile)))
    config = load_config(args.config)
    catalog = default_catalog().with_rates(section(config, "exchangeRates"))
    inventory = discover(catalog)
    if args.output == "json":
        json.dump(inventory.to_dict(), sys.stdout, indent=2)
        print()
    elif args.output == "yaml":
        yaml.safe_dump(inventory.to_dict(), sys.stdout, sort_keys=False)
    else:
        print(render_table(inventory))
    return 0


def health_text(d: Device) -> str:
    """``ok``, ``degraded (score 80: reasons)`` or ``unhealthy (score 20: reasons)``."""
    h = d.health
    if h.score >= 100 and not h.reasons:
        return "ok"
    grade = "degraded" if h.score >= HEALTHY_THRESHOLD else "unhealthy"
    detail = f"score {h.score}" + (f": {'; '.join(h.reasons)}" if h.reasons else "")
    return f"{grade} ({detail})"


def tflops_text(value: float) -> str:
    """Three significant figures at most, no exponent: 64.99 -> 65, 265.2 -> 265, 1.234 -> 1.23."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{float(f'{value:.3g}'):g}"


def bytes_text(n: int) -> str:
    """``human_bytes`` with a unit even for zero (``0Gi``, not a bare ``0``)."""
    return "0Gi" if n == 0 else human_bytes(n) if n >= 1024 else f"{n}B"


def render_table(inv: Inventory) -> str:
    lines = []
    if not inv.devices:
        lines.append("No accelerators found. Libraries looked for:")
        for s in inv.libraries:
            lines.append(f"  {s.vendor:<10} {s.library:<20} {'loaded ' + s.path if s.loaded else s.error}")
        lines.append("To see what HCS reports on a GPU/NPU node, inspect a simulated one: "
                     "hcs inspect --profile a100-80g-nvlink-8 (hcs inspect --list-profiles)")
        return "\n".join(lines)
    header = ("DEVICE", "MODEL", "VRAM", "USED", "FP16*", "NUMA", "PCI", "ISLAND", "HEALTH")
    rows = [header]
    unknown_numa = False
    for d in inv.devices:
        unknown_numa |= d.numa_node < 0
        rows.append((d.key, d.model, human_bytes(d.vram_total_bytes), bytes_text(d.vram_used_bytes),
                     tflops_text(d.compute.a100_equiv_tflops), str(d.numa_node) if d.numa_node >= 0 else "?",
                     d.pci_bus_id, d.island, health_text(d)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    lines.append("")
    lines.append("ISLANDS")
    for i in inv.islands:
        bw = f"min {i.min_gbps:g} GB/s" if i.min_gbps > 0 else "no direct links"
        lines.append(f"  {i.id:<22} {i.link_type:<8} {len(i.members)} device(s)  {bw}  {','.join(i.members)}")
    lines.append("")
    for s in inv.libraries:
        state = f"{s.device_count} device(s) via {s.path}" if s.loaded else f"not used: {s.error}"
        lines.append(f"  {s.vendor:<10} {s.library:<20} {state}")
    lines.append("  * FP16 in A100-equivalent TFLOPS (exchange rate x 312)")
    if unknown_numa:
        lines.append("  NUMA ?: the driver's CPU affinity does not match this host's NUMA layout "
                     "(as with simulated devices), so it is not guessed")
    return "\n".join(lines)
