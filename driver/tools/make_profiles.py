#!/usr/bin/env python3
"""Regenerate the shipped node profiles in driver/profiles/ (deterministic output).

Run: python3 driver/tools/make_profiles.py [OUT_DIR]   (default: driver/profiles/)
Identifiers are derived from a hash of the profile name, so they are stable and distinct.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "profiles"


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def nvidia_uuid(seed: str) -> str:
    h = _hex(seed, 32)
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def ascend_uuid(seed: str) -> str:
    # DCMI reports the die id as 5 x 32-bit words; the uuid is their uppercase hex.
    h = _hex(seed, 40).upper()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def hygon_uuid(seed: str) -> str:
    # rsmi_dev_unique_id_get reports a 64-bit id.
    return "0x" + _hex(seed, 16)


def cambricon_uuid(seed: str) -> str:
    h = _hex(seed, 32)
    return f"MLU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


UUID = {"nvidia": nvidia_uuid, "ascend": ascend_uuid, "hygon": hygon_uuid, "cambricon": cambricon_uuid}


def mesh(members: list[int], i: int, link: str, gbps: float) -> list[dict[str, Any]]:
    return [{"peer": p, "type": link, "gbps": gbps} for p in members if p != i]


def devices(profile: str, vendor: str, model: str, memory_mib: int, buses: list[int], numa: list[int],
            islands: list[list[int]], link: str | None, gbps: float, serial_base: int,
            temps: tuple[int, ...] = (33, 35, 34, 36, 32, 37, 35, 34)) -> list[dict[str, Any]]:
    out = []
    for i, bus in enumerate(buses):
        d: dict[str, Any] = {
            "vendor": vendor,
            "model": model,
            "uuid": UUID[vendor](f"{profile}/{vendor}/{i}"),
            "pci_bus_id": f"0000:{bus:02x}:00.0",
            "memory_mib": memory_mib,
            "numa_node": numa[i],
            "minor": i,
            "serial": str(serial_base + i),
            "temperature_c": temps[i % len(temps)],
            "utilization_pct": 0,
            "health": "ok",
        }
        if link is not None:
            island = next((m for m in islands if i in m), [i])
            d["links"] = mesh(island, i, link, gbps)
        out.append(d)
    return out


def write(name: str, description: str, devs: list[dict[str, Any]], driver: str, out: Path) -> None:
    doc = {"name": name, "description": description, "driver_version": driver, "devices": devs}
    text = json.dumps(doc, indent=2)
    # One link per line keeps the files readable.
    text = re.sub(r'\{\n\s+"peer": (\d+),\n\s+"type": "(\w+)",\n\s+"gbps": ([\d.]+)\n\s+\}',
                  r'{"peer": \1, "type": "\2", "gbps": \3}', text)
    (out / f"{name}.json").write_text(text + "\n")


def main(out: Path = OUT) -> None:
    out.mkdir(exist_ok=True)
    all8 = [list(range(8))]
    numa8 = [0, 0, 0, 0, 1, 1, 1, 1]
    n = "a100-80g-nvlink-8"
    write(n, "8x NVIDIA A100-SXM4-80GB (HGX A100), NVLink3 600 GB/s all-to-all through NVSwitch, 2 NUMA nodes",
          devices(n, "nvidia", "NVIDIA A100-SXM4-80GB", 81920, [0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD],
                  numa8, all8, "nvlink", 600, 1564720004631), "550.54.15", out)
    n = "a100-40g-nvlink-2x4"
    write(n, "8x NVIDIA A100-SXM4-40GB as two NVLink3 islands of 4 (600 GB/s inside an island, PCIe between)",
          devices(n, "nvidia", "NVIDIA A100-SXM4-40GB", 40960, [0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD],
                  numa8, [[0, 1, 2, 3], [4, 5, 6, 7]], "nvlink", 600, 1564720014631), "550.54.15", out)
    n = "h100-nvlink-8"
    write(n, "8x NVIDIA H100 80GB HBM3 (HGX H100 SXM5), NVLink4 900 GB/s all-to-all through NVSwitch",
          devices(n, "nvidia", "NVIDIA H100 80GB HBM3", 81559, [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB],
                  numa8, all8, "nvlink", 900, 1654922008812), "550.54.15", out)
    n = "t4-pcie-4"
    write(n, "4x NVIDIA Tesla T4 16 GB, PCIe Gen3 only (no NVLink)",
          devices(n, "nvidia", "Tesla T4", 15360, [0x3B, 0x5E, 0x86, 0xAF], [0, 0, 1, 1], [], None, 0,
                  1322119045111), "535.161.08", out)
    n = "ascend-910b-hccs-8"
    write(n, "8x Huawei Ascend 910B3 64 GB (Atlas 800T A2), HCCS full mesh, 56 GB/s per link",
          devices(n, "ascend", "910B3", 65536, [0x01, 0x02, 0x41, 0x42, 0x81, 0x82, 0xC1, 0xC2], numa8, all8,
                  "hccs", 56, 102300117), "23.0.3", out)
    n = "hygon-k100ai-xgmi-8"
    write(n, "8x Hygon DCU K100_AI 64 GB, one xGMI hive (link bandwidth not published; 100 GB/s assumed)",
          devices(n, "hygon", "K100_AI", 65536, [0x03, 0x23, 0x43, 0x63, 0x83, 0xA3, 0xC3, 0xE3], numa8, all8,
                  "xgmi", 100, 210400230), "6.3.8", out)
    n = "mlu370-x8-mlulink-8"
    write(n, "8x Cambricon MLU370-X8 48 GB, MLU-Link full mesh through the 4-card bridge (200 GB/s per card "
             "spread over 7 links)",
          devices(n, "cambricon", "MLU370-X8", 49152, [0x1A, 0x1B, 0x3D, 0x3E, 0x89, 0x8A, 0xB1, 0xB2], numa8, all8,
                  "mlulink", 28.5, 3723000481), "5.10.22", out)
    n = "mixed-a100-910b"
    mixed = devices(n, "nvidia", "NVIDIA A100-SXM4-80GB", 81920, [0x07, 0x0F, 0x47, 0x4E], [0, 0, 0, 0],
                    [[0, 1, 2, 3]], "nvlink", 600, 1564720024631)
    mixed += devices(n, "ascend", "910B3", 65536, [0x81, 0x82, 0xC1, 0xC2], [1, 1, 1, 1], [[0, 1, 2, 3]], "hccs", 56,
                     102300217)
    write(n, "Mixed node: 4x NVIDIA A100-SXM4-80GB (NVLink, NUMA 0) + 4x Ascend 910B3 (HCCS, NUMA 1)", mixed,
          "550.54.15", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
