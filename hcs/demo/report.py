"""Demo output: one line per placement as it happens, the summary table, JSON and the PNG."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hcs.quantity import human_bytes

#: a free slice smaller than this cannot take the seed's basic pod: it counts as fragmented.
FRAGMENT_BYTES = 16 * 2**30
SHOWN_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES",
             "HIP_VISIBLE_DEVICES", "MLU_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "LD_PRELOAD", "HCS_QUOTA_FILE")


@dataclass
class DeviceUse:
    node: str
    key: str  # e.g. nvidia-3
    vendor: str
    model: str
    total: int
    pods: dict[str, int] = field(default_factory=dict)  # pod -> bytes

    @property
    def used(self) -> int:
        return sum(self.pods.values())


@dataclass
class PodResult:
    name: str
    node: str = ""
    vendor: str = ""
    devices: list[dict[str, Any]] = field(default_factory=list)
    vram_bytes: int = 0
    env: dict[str, str] = field(default_factory=dict)
    quota: str = ""
    pending_reason: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        if self.pending_reason:
            return {"name": self.name, "pending_reason": self.pending_reason}
        return {"name": self.name, "node": self.node, "vendor": self.vendor, "devices": self.devices,
                "vram_bytes": self.vram_bytes, "env": self.env, "quota": self.quota}


def placement_line(r: PodResult) -> str:
    if r.pending_reason:
        return f"  PENDING {r.name:<16} {r.pending_reason}"
    devs = ",".join(f"{d['key']}:{human_bytes(d['vram_bytes'])}" for d in r.devices)
    env = " ".join(f"{k}={v}" for k, v in r.env.items() if k in SHOWN_ENV and k not in ("LD_PRELOAD", "HCS_QUOTA_FILE"))
    return f"  PLACED  {r.name:<16} -> {r.node:<14} {r.vendor:<9} [{devs}]  {env}"


def utilisation(devices: list[DeviceUse]) -> dict[str, Any]:
    total = sum(d.total for d in devices)
    used = sum(d.used for d in devices)
    free = total - used
    fragmented = sum(d.total - d.used for d in devices if 0 < d.total - d.used < FRAGMENT_BYTES)
    return {"vram_total_bytes": total, "vram_used_bytes": used,
            "utilisation_pct": round(100 * used / total, 1) if total else 0.0,
            "fragmented_free_pct": round(100 * fragmented / free, 1) if free else 0.0}


def summary(pods: list[PodResult], devices: list[DeviceUse]) -> dict[str, Any]:
    by_vendor: dict[str, dict[str, Any]] = {}
    for vendor in sorted({d.vendor for d in devices}):
        mine = [d for d in devices if d.vendor == vendor]
        by_vendor[vendor] = {"devices": len(mine), "pods": sum(1 for p in pods if p.vendor == vendor),
                             **utilisation(mine)}
    return {"pods_placed": sum(1 for p in pods if not p.pending_reason),
            "pods_pending": sum(1 for p in pods if p.pending_reason),
            "vendors_used": sorted({p.vendor for p in pods if p.vendor}),
            "cluster": utilisation(devices), "by_vendor": by_vendor}


def summary_table(s: dict[str, Any]) -> str:
    rows = [("VENDOR", "DEVICES", "PODS", "VRAM USED", "VRAM TOTAL", "UTIL", "FRAGMENTED FREE")]
    for vendor, v in s["by_vendor"].items():
        rows.append((vendor, str(v["devices"]), str(v["pods"]), human_bytes(v["vram_used_bytes"]),
                     human_bytes(v["vram_total_bytes"]), f"{v['utilisation_pct']}%", f"{v['fragmented_free_pct']}%"))
    c = s["cluster"]
    rows.append(("TOTAL", str(sum(v["devices"] for v in s["by_vendor"].values())), str(s["pods_placed"]),
                 human_bytes(c["vram_used_bytes"]), human_bytes(c["vram_total_bytes"]), f"{c['utilisation_pct']}%",
                 f"{c['fragmented_free_pct']}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(f"{s['pods_placed']} pods placed on {', '.join(s['vendors_used'])}; {s['pods_pending']} pending")
    return "\n".join(lines)


def plot_occupancy(devices: list[DeviceUse], path: str) -> None:
    """Stacked bars of VRAM per device, one colour per pod, grouped by node."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, len(devices) * 0.35), 5))
    cmap = plt.get_cmap("tab20")
    pod_colour: dict[str, Any] = {}
    labels = []
    for x, d in enumerate(devices):
        bottom = 0.0
        for pod, size in sorted(d.pods.items()):
            colour = pod_colour.setdefault(pod, cmap(len(pod_colour) % 20))
            ax.bar(x, size / 2**30, bottom=bottom, color=colour, edgecolor="white", linewidth=0.5)
            bottom += size / 2**30
        ax.bar(x, (d.total - d.used) / 2**30, bottom=bottom, color="#eeeeee", edgecolor="#cccccc", linewidth=0.5)
        labels.append(f"{d.node}/{d.key}")
    ax.set_xticks(range(len(devices)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("VRAM (GiB)")
    ax.set_title("HCS demo: VRAM occupancy per device (grey = free)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
