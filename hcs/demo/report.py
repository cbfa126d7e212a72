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
    pending_reasons: list[str] = field(default_factory=list)  # one per node ("node: why")
    note: str = ""
    mounts: dict[str, str] = field(default_factory=dict)  # container path -> host path

    @property
    def pending_reason(self) -> str:
        return "; ".join(self.pending_reasons)

    def to_dict(self) -> dict[str, Any]:
        if self.pending_reasons:
            return {"name": self.name, "pending_reason": self.pending_reason, "pending_reasons": self.pending_reasons}
        return {"name": self.name, "node": self.node, "vendor": self.vendor, "devices": self.devices,
                "vram_bytes": self.vram_bytes, "env": self.env, "quota": self.quota}


def placement_line(r: PodResult) -> str:
    """One line per placed pod; a pending pod gets a header and one line per node saying why."""
    if r.pending_reasons:
        lines = [f"  PENDING {r.name:<16} {r.note}".rstrip()]
        lines += [f"          {reason}" for reason in r.pending_reasons]
        return "\n".join(lines)
    devs = ",".join(f"{d['key']}:{human_bytes(d['vram_bytes'])}" for d in r.devices)
    env = " ".join(f"{k}={v}" for k, v in r.env.items() if k in SHOWN_ENV and k not in ("LD_PRELOAD", "HCS_QUOTA_FILE"))
    return f"  PLACED  {r.name:<16} -> {r.node:<14} {r.vendor:<9} [{devs}]  {env}"


def quota_text(quota: str) -> str:
    """The quota file's ``<device index> <bytes>`` lines (joined by ``; ``) in words."""
    parts = []
    for line in filter(None, (x.strip() for x in quota.split(";"))):
        index, _, size = line.partition(" ")
        parts.append(f"device {index}: {human_bytes(int(size))}" if size.strip().isdigit() else line)
    return ", ".join(parts) or "(none)"


def utilisation(devices: list[DeviceUse]) -> dict[str, Any]:
    total = sum(d.total for d in devices)
    used = sum(d.used for d in devices)
    free = total - used
    fragmented = sum(d.total - d.used for d in devices if 0 < d.total - d.used < FRAGMENT_BYTES)
    return {"vram_total_bytes": total, "vram_used_bytes": used,
            "utilisation_pct": round(100 * used / total, 1) if total else 0.0,
            "fragmented_free_pct": round(100 * fragmented / free, 1) if free else 0.0}


def utilisation_text(u: dict[str, Any]) -> str:
    free = u["vram_total_bytes"] - u["vram_used_bytes"]
    return (f"{human_bytes(u['vram_used_bytes'])} of {human_bytes(u['vram_total_bytes'])} used "
            f"({u['utilisation_pct']}%); {human_bytes(free)} free, {u['fragmented_free_pct']}% of it in slices "
            f"smaller than {human_bytes(FRAGMENT_BYTES)}")


def summary(pods: list[PodResult], devices: list[DeviceUse]) -> dict[str, Any]:
    by_vendor: dict[str, dict[str, Any]] = {}
    for vendor in sorted({d.vendor for d in devices}):
        mine = [d for d in devices if d.vendor == vendor]
        by_vendor[vendor] = {"devices": len(mine), "pods": sum(1 for p in pods if p.vendor == vendor),
                             **utilisation(mine)}
    return {"pods_placed": sum(1 for p in pods if not p.pending_reasons),
            "pods_pending": sum(1 for p in pods if p.pending_reasons),
            "vendors_used": sorted({p.vendor for p in pods if p.vendor}),
            "cluster": utilisation(devices), "by_vendor": by_vendor}


def summary_table(s: dict[str, Any]) -> str:
    rows = [("VENDOR", "DEVICES", "PODS", "VRAM USED", "VRAM TOTAL", "UTIL", "FRAGMENTED FREE*")]
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
    lines.append(f"* share of the free VRAM in slices smaller than {human_bytes(FRAGMENT_BYTES)} (the seed's basic "
                 "pod), which no such pod can use")
    return "\n".join(lines)


#: pod colours: qualitative palettes without their greys, so no pod looks like free space.
def _pod_colours() -> list[Any]:
    # lazy: matplotlib takes ~0.5 s to import; only plots need it
    import matplotlib

    colours: list[Any] = []
    for name in ("tab20", "tab20b", "tab20c"):
        cmap = matplotlib.colormaps[name]
        for i in range(cmap.N):
            r, g, b, _ = cmap(i)
            if max(r, g, b) - min(r, g, b) > 0.12:  # drop greys (tab20's 14/15, tab20c's last four)
                colours.append(cmap(i))
    return colours


def plot_occupancy(devices: list[DeviceUse], path: str) -> None:
    """Stacked bars of VRAM per device, one colour per pod (named in the legend and, when the slice is
    tall enough, on the bar), free VRAM white with hatching; devices grouped by node."""
    # lazy: matplotlib takes ~0.5 s to import; only plots need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = _pod_colours()
    fig, ax = plt.subplots(figsize=(max(10, len(devices) * 0.42) + 3, 6))
    pod_colour: dict[str, Any] = {}
    labels = []
    tallest = max((d.total for d in devices), default=1) / 2**30
    for x, d in enumerate(devices):
        bottom = 0.0
        for pod, size in sorted(d.pods.items()):
            colour = pod_colour.setdefault(pod, palette[len(pod_colour) % len(palette)])
            gib = size / 2**30
            ax.bar(x, gib, bottom=bottom, color=colour, edgecolor="black", linewidth=0.4)
            if gib >= tallest * 0.09:
                ax.text(x, bottom + gib / 2, pod, ha="center", va="center", rotation=90, fontsize=5.5)
            bottom += gib
        ax.bar(x, (d.total - d.used) / 2**30, bottom=bottom, color="white", edgecolor="#999999", hatch="///",
               linewidth=0.4)
        labels.append(f"{d.node}/{d.key}")
    for i in range(1, len(devices)):
        if devices[i].node != devices[i - 1].node:
            ax.axvline(i - 0.5, color="black", lw=0.8)
    ax.set_xticks(range(len(devices)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_xlabel("device (node/device)")
    ax.set_ylabel("VRAM (GiB)")
    ax.set_title("HCS demo: VRAM per device, one colour per pod (hatched white = free)")
    handles = [Patch(facecolor="white", edgecolor="#999999", hatch="///", label="free VRAM")]
    handles += [Patch(facecolor=c, edgecolor="black", label=p) for p, c in pod_colour.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6,
              ncol=1 if len(handles) <= 40 else 2, title="pods", title_fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
