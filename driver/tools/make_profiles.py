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


def nvlinks(members: list[int], i: int, per_peer: int, version: int) -> list[dict[str, Any]]:
    """Direct NVLinks (a 4-GPU mesh or a bridged pair): ``per_peer`` 50 GB/s links to each other member."""
    return [{"peer": p, "type": "nvlink", "gbps": 50, "version": version}
            for p in members if p != i for _ in range(per_peer)]


def switch_links(per_switch: list[int], version: int) -> list[dict[str, Any]]:
    """A GPU's NVLinks to the baseboard's NVSwitches: ``per_switch[k]`` 50 GB/s links to switch k."""
    return [{"switch": k, "type": "nvlink", "gbps": 50, "version": version}
            for k, n in enumerate(per_switch) for _ in range(n)]


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


def with_links(devs: list[dict[str, Any]], links: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    for d, ls in zip(devs, links, strict=True):
        d["links"] = ls
    return devs


def hgx(name: str, model: str, memory_mib: int, per_switch: list[int], version: int, serial: int,
        buses: list[int], switch_buses: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An HGX 8-GPU baseboard: every GPU spreads its NVLinks over all the NVSwitch chips."""
    devs = devices(name, "nvidia", model, memory_mib, buses, [0, 0, 0, 0, 1, 1, 1, 1], [], None, 0, serial)
    devs = with_links(devs, [switch_links(per_switch, version) for _ in devs])
    return devs, [{"pci_bus_id": f"0000:{b:02x}:00.0"} for b in switch_buses]


def write(name: str, description: str, devs: list[dict[str, Any]], driver: str, out: Path,
          switches: list[dict[str, Any]] | None = None, source: str = "") -> None:
    doc: dict[str, Any] = {"name": name, "description": description}
    if source:
        doc["source"] = source
    doc.update({"driver_version": driver, "devices": devs})
    if switches:
        doc["nvswitches"] = switches
    text = json.dumps(doc, indent=2)
    # One link per line keeps the files readable.
    text = re.sub(r'\{\n\s+"(peer|switch)": (\d+),\n\s+"type": "(\w+)",\n\s+"gbps": ([\d.]+)'
                  r'(?:,\n\s+"version": (\d+))?\n\s+\}',
                  lambda m: '{"%s": %s, "type": "%s", "gbps": %s%s}' % (
                      m[1], m[2], m[3], m[4], f', "version": {m[5]}' if m[5] else ""), text)
    text = re.sub(r'\{\n\s+"pci_bus_id": "([0-9a-f:.]+)"\n\s+\}', r'{"pci_bus_id": "\1"}', text)
    (out / f"{name}.json").write_text(text + "\n")


def main(out: Path = OUT) -> None:
    out.mkdir(exist_ok=True)
    all8 = [list(range(8))]
    numa8 = [0, 0, 0, 0, 1, 1, 1, 1]
    a100_bus = [0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD]
    h100_bus = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB]
    hgx_a100 = "NVIDIA HGX A100 8-GPU: 6 NVSwitches, each A100 has 12 NVLink3 links, 2 to each switch (600 GB/s)"
    hgx_h100 = ("NVIDIA HGX H100/H200 8-GPU: 4 third-generation NVSwitches, each GPU has 18 NVLink4 links "
                "split 5+4+4+5 over them (900 GB/s)")
    a100_sw = [0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9]
    h100_sw = [0x05, 0x06, 0x07, 0x08]
    for n, memory, serial in (("a100-80g-nvlink-8", 81920, 1564720004631), ("hgx-a100-nvswitch-8", 81920,
                                                                             1564720034631)):
        devs, sw = hgx(n, "NVIDIA A100-SXM4-80GB", memory, [2] * 6, 3, serial, a100_bus, a100_sw)
        write(n, "8x NVIDIA A100-SXM4-80GB (HGX A100), NVLink3 600 GB/s all-to-all through 6 NVSwitches, 2 NUMA "
                 "nodes", devs, "550.54.15", out, sw, hgx_a100)
    for n, model, memory, serial in (("h100-nvlink-8", "NVIDIA H100 80GB HBM3", 81559, 1654922008812),
                                     ("hgx-h100-nvswitch-8", "NVIDIA H100 80GB HBM3", 81559, 1654922018812),
                                     ("hgx-h200-nvswitch-8", "NVIDIA H200", 143771, 1654922028812)):
        devs, sw = hgx(n, model, memory, [5, 4, 4, 5], 4, serial, h100_bus, h100_sw)
        write(n, f"8x {model} (HGX 8-GPU SXM5), NVLink4 900 GB/s all-to-all through 4 NVSwitches", devs,
              "550.54.15", out, sw, hgx_h100)
    n = "a100-40g-nvlink-2x4"
    devs = devices(n, "nvidia", "NVIDIA A100-SXM4-40GB", 40960, a100_bus, numa8, [], None, 0, 1564720014631)
    write(n, "8x NVIDIA A100-SXM4-40GB as two HGX A100 4-GPU meshes (4 NVLink3 links = 200 GB/s between any two "
             "GPUs of a board, PCIe between the boards)",
          with_links(devs, [nvlinks([0, 1, 2, 3] if i < 4 else [4, 5, 6, 7], i, 4, 3) for i in range(8)]),
          "550.54.15", out, None, "NVIDIA HGX A100 4-GPU: each A100's 12 NVLinks go 4 to each of the other three")
    n = "h100-nvl-bridge-4"
    devs = devices(n, "nvidia", "NVIDIA H100 NVL", 95830, [0x17, 0x31, 0xB1, 0xCA], [0, 0, 1, 1], [], None, 0,
                   1654922038812)
    write(n, "4x NVIDIA H100 NVL 94 GB (PCIe cards) as two pairs, each pair joined by three NVLink bridges "
             "(600 GB/s), PCIe between the pairs",
          with_links(devs, [nvlinks([0, 1] if i < 2 else [2, 3], i, 12, 4) for i in range(4)]), "550.54.15", out,
          None, "NVIDIA H100 NVL product brief: NVLink bridge pairs two cards at 600 GB/s (3 bridges)")
    n = "a100-pcie-bridge-4"
    devs = devices(n, "nvidia", "NVIDIA A100 80GB PCIe", 81920, [0x17, 0x31, 0xB1, 0xCA], [0, 0, 1, 1], [], None,
                   0, 1564720044631)
    write(n, "4x NVIDIA A100 80GB PCIe as two pairs, each joined by three NVLink bridges (600 GB/s), PCIe between "
             "the pairs",
          with_links(devs, [nvlinks([0, 1] if i < 2 else [2, 3], i, 12, 3) for i in range(4)]), "550.54.15", out,
          None, "NVIDIA A100 PCIe datasheet: NVLink Bridge for 2 GPUs, 600 GB/s (three bridges, 12 links)")
    n = "t4-pcie-4"
    write(n, "4x NVIDIA Tesla T4 16 GB, PCIe Gen3 only (no NVLink)",
          devices(n, "nvidia", "Tesla T4", 15360, [0x3B, 0x5E, 0x86, 0xAF], [0, 0, 1, 1], [], None, 0,
                  1322119045111), "535.161.08", out)
    n = "ascend-910b-hccs-8"
    write(n, "8x Huawei Ascend 910B3 64 GB (Atlas 800T A2), HCCS full mesh, 56 GB/s per link",
          devices(n, "ascend", "910B3", 65536, [0x01, 0x02, 0x41, 0x42, 0x81, 0x82, 0xC1, 0xC2], numa8, all8,
                  "hccs", 56, 102300117), "23.0.3", out)
    n = "atlas800t-a2-910b-8"
    write(n, "8x Huawei Ascend 910B3 64 GB (Atlas 800T A2 training server), all 8 NPUs in one HCCS full mesh "
             "(56 GB/s per link, 392 GB/s per NPU)",
          devices(n, "ascend", "910B3", 65536, [0x01, 0x02, 0x41, 0x42, 0x81, 0x82, 0xC1, 0xC2], numa8, all8,
                  "hccs", 56, 102300317), "23.0.3", out, None,
          "Huawei Atlas 800T A2 technical white paper: 8 NPUs fully interconnected by HCCS")
    n = "atlas800-910a-8"
    write(n, "8x Huawei Ascend 910 32 GB (Atlas 800 training server, model 9000): two groups of 4 NPUs, HCCS full "
             "mesh inside a group (30 GB/s per link), PCIe between the groups",
          devices(n, "ascend", "910A", 32768, [0x01, 0x02, 0x41, 0x42, 0x81, 0x82, 0xC1, 0xC2], numa8,
                  [[0, 1, 2, 3], [4, 5, 6, 7]], "hccs", 30, 102300417), "23.0.3", out, None,
          "Huawei Atlas 800 (model 9000) user guide / Ascend HCCL docs: NPUs 0-3 and 4-7 form two HCCS rings of 4; "
          "traffic between the groups goes over PCIe")
    n = "mlu370-x8-bridge-2x4"
    write(n, "8x Cambricon MLU370-X8 48 GB as two groups of 4 cards, each group joined by a 4-card MLU-Link bridge "
             "(200 GB/s per card), PCIe between the groups",
          devices(n, "cambricon", "MLU370-X8", 49152, [0x1A, 0x1B, 0x3D, 0x3E, 0x89, 0x8A, 0xB1, 0xB2], numa8,
                  [[0, 1, 2, 3], [4, 5, 6, 7]], "mlulink", 66.7, 3723000581), "5.10.22", out, None,
          "Cambricon MLU370-X8 product page: dual-chip card, MLU-Link inside the card and across 4 cards with the "
          "MLU-Link bridge, 200 GB/s per card")
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
    mixed = with_links(devices(n, "nvidia", "NVIDIA A100-SXM4-80GB", 81920, [0x07, 0x0F, 0x47, 0x4E],
                               [0, 0, 0, 0], [], None, 0, 1564720024631),
                       [nvlinks([0, 1, 2, 3], i, 4, 3) for i in range(4)])
    mixed += devices(n, "ascend", "910B3", 65536, [0x81, 0x82, 0xC1, 0xC2], [1, 1, 1, 1], [[0, 1, 2, 3]], "hccs", 56,
                     102300217)
    write(n, "Mixed node: 4x NVIDIA A100-SXM4-80GB (NVLink, NUMA 0) + 4x Ascend 910B3 (HCCS, NUMA 1)", mixed,
          "550.54.15", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
