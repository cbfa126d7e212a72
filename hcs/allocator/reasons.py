"""Why a pod does not fit a node, in words that name the actual blocker.

Each function builds one reason for one node: free VRAM vs free TFLOPS on a shared device, whole
devices vs the node's size or its largest interconnect island, idle devices, or the pod's
vendor/model filter. The planner (``placement.py``) calls them only for nodes that
do not fit, so they are off the hot path of a fitting placement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from hcs.cluster_inventory import DeviceInfo
from hcs.quantity import human_bytes

ANN_VENDOR = "hcs.io/vendor"
ANN_MODEL = "hcs.io/model"


def tflops(milli: int) -> str:
    return f"{milli / 1000:g}"


def need_text(vram_bytes: int, tflops_milli: int) -> str:
    return f"{human_bytes(vram_bytes)} VRAM" + (f" + {tflops(tflops_milli)} TFLOPS" if tflops_milli else "")


def share_shortfall(vram_bytes: int, tflops_milli: int, device_vram: int, largest_free_vram: int,
                    tflops_free_where_vram_fits: int | None) -> str:
    """A request that fits one device: say whether VRAM or TFLOPS is short.

    ``tflops_free_where_vram_fits``: the most free TFLOPS (milli) among devices with enough free VRAM,
    None when no device has enough free VRAM.
    """
    if tflops_free_where_vram_fits is None:
        return (f"not enough free VRAM: needs {human_bytes(vram_bytes)} VRAM on one device, the most free is "
                f"{human_bytes(largest_free_vram)} of {human_bytes(device_vram)}")
    return (f"not enough free TFLOPS: needs {tflops(tflops_milli)} TFLOPS on one device; the devices with "
            f"{human_bytes(vram_bytes)} VRAM free have at most {tflops(tflops_free_where_vram_fits)} TFLOPS free")


def whole_shortfall(vram_bytes: int, tflops_milli: int, k: int, model: str, device_vram: int, device_tflops: int,
                    devices: int, idle: int, high_bandwidth: bool, island_sizes: Iterable[int] = (),
                    island_idle: Iterable[int] = ()) -> str:
    """A request of ``k`` whole devices: the node is too small, its islands are, or too few are idle.

    ``devices``: usable (present, healthy, allowed) devices of ``model`` on the node; ``island_sizes`` /
    ``island_idle``: per interconnect island, its usable / idle devices (only needed with high bandwidth).
    """
    each = human_bytes(device_vram) + (f" / {tflops(device_tflops)} TFLOPS" if tflops_milli else "")
    what = f"{k} whole {model} devices ({each} each) for {need_text(vram_bytes, tflops_milli)}"
    if devices < k:
        return f"node too small: needs {what}, the node has {devices}"
    sizes = list(island_sizes)
    if high_bandwidth and sizes and max(sizes) < k:
        return (f"island too small: needs {what} on one interconnect island (high-bandwidth), "
                f"the largest island has {max(sizes)}")
    if idle < k:
        return f"devices busy: needs {what}, {idle} of {devices} idle"
    if high_bandwidth:
        most = max(island_idle, default=0)
        return f"devices busy: needs {what} idle on one interconnect island, at most {most} idle on one island"
    return f"devices busy: needs {what}, {idle} idle could not be combined"


def filter_shortfall(vendors_in: Iterable[str], vendors_out: Iterable[str], models_in: Iterable[str],
                     models_out: Iterable[str], node_devices: Iterable[tuple[str, str]]) -> str:
    """The pod's vendor/model filter excludes every device of the node (``(vendor, model)`` pairs)."""
    have = Counter(node_devices)
    if not have:
        return "node has no accelerator devices"
    vin, vout, min_, mout = set(vendors_in), set(vendors_out), set(models_in), set(models_out)
    vendors = sorted({v for v, _ in have})
    models = sorted({m for _, m in have})
    if (vin and not set(vendors) & vin) or (vout and set(vendors) <= vout):
        want = ",".join(sorted(vin) + [f"!{v}" for v in sorted(vout)])
        return f"vendor filter: {ANN_VENDOR}={want} excludes this node's {', '.join(vendors)} devices"
    if min_ or mout:
        want = ",".join(sorted(min_) + [f"!{m}" for m in sorted(mout)])
        return f"model filter: {ANN_MODEL}={want} excludes this node's {', '.join(models)} devices"
    return "no device matches the vendor/model constraints"


def island_counts(devices: Iterable[DeviceInfo],
                  usage: Mapping[str, tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(usable devices, idle devices) per interconnect island; a device without an island is its own."""
    sizes: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    for d in devices:
        key = d.island or f"device:{d.name}"
        sizes[key] += 1
        if usage.get(d.name, (0, 0)) == (0, 0):
            idle[key] += 1
    return list(sizes.values()), [idle[k] for k in sizes]
