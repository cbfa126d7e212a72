"""``hcs inspect``: print this node's compute fingerprint."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from hcs.config import load_config, section
from hcs.devices.catalog import default_catalog
from hcs.devices.inventory import Inventory, discover
from hcs.quantity import human_bytes


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect", help="discover this node's accelerators and print its compute fingerprint",
        description="Discover NVIDIA, Ascend, Hygon and Cambricon devices through each vendor's management "
        "library and print the node's compute fingerprint (devices, islands, health).",
    )
    p.add_argument("--output", "-o", choices=("table", "json", "yaml"), default="table")
    p.add_argument("--profile", help="simulated node profile (sets HCS_SIM_PROFILE), e.g. "
                   "driver/profiles/a100-80g-nvlink-8.json")
    p.add_argument("--config", help="HCS YAML config (its exchangeRates section overrides the defaults)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.profile:
        os.environ["HCS_SIM_PROFILE"] = args.profile
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


def render_table(inv: Inventory) -> str:
    lines = []
    if not inv.devices:
        lines.append("No accelerators found. Libraries looked for:")
        for s in inv.libraries:
            lines.append(f"  {s.vendor:<10} {s.library:<20} {'loaded ' + s.path if s.loaded else s.error}")
        return "\n".join(lines)
    header = ("DEVICE", "MODEL", "VRAM", "USED", "FP16*", "NUMA", "PCI", "ISLAND", "HEALTH")
    rows = [header]
    for d in inv.devices:
        health = f"{d.health.score}" + (f" ({'; '.join(d.health.reasons)})" if d.health.reasons else "")
        rows.append((d.key, d.model, human_bytes(d.vram_total_bytes), human_bytes(d.vram_used_bytes),
                     f"{d.compute.a100_equiv_tflops:g}", str(d.numa_node), d.pci_bus_id, d.island, health))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    lines.append("")
    lines.append("ISLANDS")
    for i in inv.islands:
        lines.append(f"  {i.id:<22} {i.link_type:<8} {len(i.members)} device(s)  min {i.min_gbps:g} GB/s  "
                     f"{','.join(i.members)}")
    lines.append("")
    for s in inv.libraries:
        state = f"{s.device_count} device(s) via {s.path}" if s.loaded else f"not used: {s.error}"
        lines.append(f"  {s.vendor:<10} {s.library:<20} {state}")
    lines.append("  * FP16 in A100-equivalent TFLOPS (exchange rate x 312)")
    return "\n".join(lines)
