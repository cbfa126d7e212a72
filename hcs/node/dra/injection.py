"""Vendor runtime injection: which env, device nodes and mounts a container needs for its devices.

One table for both request paths (device plugin ``Allocate`` and DRA CDI specs). It is a pure
function of the devices, their in-container order and the per-device VRAM quota; the callers do
the I/O (writing the quota file, checking host paths exist, building CDI or gRPC messages).

Visible-device numbering. ``*_VISIBLE_DEVICES`` selects devices *inside* the container. With real
hardware the container only gets its own device nodes, so the vendor runtime renumbers the
devices it can open as 0..k-1 (``device_isolation=True``, the default). The simulated drivers
ignore device nodes and see every device of the node profile, so for them the selection must use
host indices (``device_isolation=False``). NVIDIA uses UUIDs, which are right either way.
The quota file is always indexed by the in-container ordinal (position in ``devices``), which is
what the application sees in both cases.

Quota that the container cannot leave (interceptor/README.md, "Managed containers"): the
interceptor is preloaded from a read-only ``/etc/ld.so.preload`` as well as ``LD_PRELOAD`` (so
unsetting the variable changes nothing), the quota file is mounted read-only at the fixed path
``/var/run/hcs/quota`` and the VRAM ledger directory read-only at ``/var/run/hcs/shm``; when the
quota file is there the interceptor reads no environment variable at all. The ledger is the
kernel's table of byte-range locks on ``hcs-vram.ledger`` in that directory, a file the agent
creates empty and nobody ever writes: the container cannot zero, replace or forge it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hcs.devices.model import Device, Vendor
from hcs.fileio import atomic_write

#: Where the interceptor library and the quota file appear inside the container. The quota file and
#: ledger paths are compiled into the interceptor (interceptor/src/hcs_interceptor.c): keep in step.
INTERCEPTOR_LIB = "libhcs_interceptor.so"
CONTAINER_INTERCEPTOR_DIR = "/usr/local/hcs/lib"
CONTAINER_STATE_DIR = "/var/run/hcs"
CONTAINER_QUOTA_FILE = f"{CONTAINER_STATE_DIR}/quota"
CONTAINER_LEDGER_DIR = f"{CONTAINER_STATE_DIR}/shm"
CONTAINER_LD_SO_PRELOAD = "/etc/ld.so.preload"
#: The ledger file inside the ledger directory (interceptor/src/region.h HCS_LEDGER_FILE).
LEDGER_FILE = "hcs-vram.ledger"

#: Container paths the agent's read-only mounts occupy. A pod's own volumeMount at one of them, or
#: below one, is mounted after the agent's (containerd orders mounts by path depth, stably) and
#: shadows it: a ConfigMap ``subPath`` at /var/run/hcs/quota replaces the quota, one at
#: /etc/ld.so.preload removes the preload. Admission must deny such mounts in quota'd pods
#: (``shadows_managed_path``); mounts at an ancestor (/etc, /var/run) are mounted first and harmless.
PROTECTED_CONTAINER_PATHS = (CONTAINER_LD_SO_PRELOAD, CONTAINER_STATE_DIR, "/run/hcs", CONTAINER_INTERCEPTOR_DIR)


def shadows_managed_path(mount_path: str) -> bool:
    """True when a pod volumeMount at ``mount_path`` would cover one of the agent's mounts."""
    p = "/" + "/".join(x for x in mount_path.split("/") if x not in ("", "."))
    return any(p == q or p.startswith(q + "/") for q in PROTECTED_CONTAINER_PATHS)

ASCEND_DRIVER_ROOT = "/usr/local/Ascend/driver"
HYGON_HAL_DIR = "/opt/hyhal"


@dataclass(frozen=True)
class DeviceNode:
    """A device node to create in the container (same path as on the host unless ``host_path``)."""

    path: str
    host_path: str = ""
    permissions: str = "rw"

    @property
    def source(self) -> str:
        return self.host_path or self.path


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerEdits:
    """Edits for one container; ``env`` keeps insertion order (deterministic CDI specs)."""

    env: tuple[tuple[str, str], ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def env_list(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.env]


@dataclass(frozen=True)
class InjectionOptions:
    """Node-level choices; defaults fit a real node with the HCS interceptor installed."""

    #: Host directory holding libhcs_interceptor.so ("" disables the interceptor preload).
    interceptor_host_dir: str = "/usr/local/hcs/lib"
    #: True when device nodes isolate devices (real hardware); False for the simulated drivers.
    device_isolation: bool = True
    #: Host file (written by the agent, ``preload_file_text()``) mounted read-only at
    #: /etc/ld.so.preload whenever the interceptor is; "" = LD_PRELOAD only.
    preload_host_path: str = ""


@dataclass(frozen=True)
class QuotaFiles:
    """Host and container path of the quota file and the shared accounting directory."""

    quota_host_path: str
    quota_container_path: str
    shm_host_dir: str = ""
    shm_container_dir: str = ""
    #: node-wide compute ledger dir, mounted read-write at CONTAINER_COMPUTE_DIR ("" = none)
    compute_host_dir: str = ""


def quota_file_text(quotas: Sequence[int], shares: Sequence[ComputeShare | None] = ()) -> str:
    """The interceptor's quota file: one line ``<in-container index> <bytes>`` per device; with compute
    shares, the agent's record of them as ``# hcs-compute <index> <share>`` lines (comments to the VRAM
    parser; what the interceptor falls back to when the share file is missing or bad)."""
    text = "".join(f"{i} {int(q)}\n" for i, q in enumerate(quotas))
    return text + "".join(f"# hcs-compute {i} {s.share:.6f}\n" for i, s in enumerate(shares) if s is not None)


#: The share file in the container's (read-only) ledger dir: interceptor/src/compute_hooks.inc.
COMPUTE_SHARE_FILE = "compute"
#: Node-wide directory of the per-device compute ledgers, read-write in every managed container.
CONTAINER_COMPUTE_DIR = f"{CONTAINER_STATE_DIR}/compute"


@dataclass(frozen=True)
class ComputeShare:
    """A container's compute grant on one device: ``granted`` of the device's ``device`` TFLOPS, both
    in A100-equivalent TFLOPS (the exchange rate applied), and the device's ledger name."""

    granted: float
    device: float
    key: str

    @property
    def share(self) -> float:
        return min(1.0, self.granted / self.device) if self.device > 0 else 1.0


def compute_share(granted_tflops: float, device_tflops: float, uuid: str) -> ComputeShare | None:
    """The share for a grant, or None when no compute was granted (the device is not limited). A grant
    above the device is capped at the whole device."""
    if granted_tflops <= 0 or device_tflops <= 0:
        return None
    key = "".join(c if c.isalnum() or c in "-_." else "-" for c in uuid)[:63]
    return ComputeShare(min(granted_tflops, device_tflops), device_tflops, key)


def compute_share_text(shares: Sequence[ComputeShare | None], policy: str, group: str) -> str:
    """The share file: ``policy``, ``group`` (the container: its processes share one budget) and one
    ``<index> <share> <granted TFLOPS> <device TFLOPS> <device id>`` line per limited device."""
    lines = ["# written by the HCS node agent; interceptor/README.md \"Compute limits\"\n",
             f"policy {policy}\n", f"group {group}\n"]
    for i, s in enumerate(shares):
        if s is not None:
            lines.append(f"{i} {s.share:.6f} {s.granted:.4f} {s.device:.4f} {s.key}\n")
    return "".join(lines)


def preload_file_text() -> str:
    """The /etc/ld.so.preload the agent mounts into quota'd containers."""
    return f"{CONTAINER_INTERCEPTOR_DIR}/{INTERCEPTOR_LIB}\n"


def ensure_preload_file(path: Path) -> None:
    """Write the host side of /etc/ld.so.preload (world-readable) unless it already says the same.

    Atomic (temp + rename): a container starting meanwhile sees the old or the new file, never half."""
    text = preload_file_text()
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, mode=0o444)  # per-thread temp name: claims are prepared concurrently


#: The device list next to the ledger: "<in-container index> <uuid>" per device. The interceptor maps a
#: CUDA ordinal to this index by the device's UUID, so CUDA_VISIBLE_DEVICES set inside the container
#: (reordered, or one GPU per rank) cannot move a GPU to another quota line or split its ledger.
DEVICE_LIST_FILE = "devices"


def device_list_text(uuids: Sequence[str]) -> str:
    return "".join(f"{i} {u}\n" for i, u in enumerate(uuids))


def create_ledger(directory: Path, uuids: Sequence[str] = (), compute_text: str = "") -> None:
    """The container's VRAM ledger: a directory (mounted read-only) holding one empty file whose
    byte-range locks are the accounting, and the device list. Idempotent; the ledger file is never
    truncated (live locks on it belong to running processes); the list is replaced atomically.
    ``compute_text``: the share file (compute limits), written atomically next to them; "" removes it."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    fd = os.open(directory / LEDGER_FILE, os.O_RDONLY | os.O_CREAT, 0o444)
    os.close(fd)
    share_file = directory / COMPUTE_SHARE_FILE
    if compute_text:
        atomic_write(share_file, compute_text, mode=0o444)
    elif share_file.exists():
        share_file.unlink()
    text = device_list_text(uuids)
    target = directory / DEVICE_LIST_FILE
    try:
        if target.read_text() == text:
            return
    except OSError:
        pass
    tmp = directory / f".{DEVICE_LIST_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def _selection(devices: Sequence[Device], isolation: bool) -> str:
    if isolation:
        return ",".join(str(i) for i in range(len(devices)))
    return ",".join(str(d.index) for d in devices)


def _nodes(paths: Sequence[str]) -> tuple[DeviceNode, ...]:
    seen: dict[str, DeviceNode] = {}
    for p in paths:
        seen.setdefault(p, DeviceNode(path=p))
    return tuple(seen.values())


def _vendor_edits(vendor: Vendor, devices: Sequence[Device], isolation: bool) -> ContainerEdits:
    own = [n for d in devices for n in d.device_nodes]
    host_ids = ",".join(str(d.index) for d in devices)
    sel = _selection(devices, isolation)
    if vendor is Vendor.NVIDIA:
        uuids = ",".join(d.uuid for d in devices)
        return ContainerEdits(
            env=(("NVIDIA_VISIBLE_DEVICES", uuids), ("CUDA_VISIBLE_DEVICES", uuids)),
            device_nodes=_nodes([*own, "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]),
        )
    if vendor is Vendor.ASCEND:
        return ContainerEdits(
            env=(
                ("ASCEND_VISIBLE_DEVICES", host_ids),  # physical ids, for the Ascend docker runtime
                ("ASCEND_RT_VISIBLE_DEVICES", sel),
                ("LD_LIBRARY_PATH", f"{ASCEND_DRIVER_ROOT}/lib64:{ASCEND_DRIVER_ROOT}/lib64/driver"),
            ),
            device_nodes=_nodes([*own, "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]),
            mounts=(
                Mount(ASCEND_DRIVER_ROOT, ASCEND_DRIVER_ROOT),
                Mount("/usr/local/dcmi", "/usr/local/dcmi"),
                Mount("/usr/local/bin/npu-smi", "/usr/local/bin/npu-smi"),
            ),
        )
    if vendor is Vendor.HYGON:
        return ContainerEdits(
            env=(("HIP_VISIBLE_DEVICES", sel),),
            device_nodes=_nodes(["/dev/kfd", "/dev/mkfd", *own]),
            mounts=(Mount(HYGON_HAL_DIR, HYGON_HAL_DIR),),
        )
    # Cambricon
    return ContainerEdits(
        env=(("MLU_VISIBLE_DEVICES", sel),),
        device_nodes=_nodes([*own, "/dev/cambricon_ctl"]),
        mounts=(Mount("/usr/bin/cnmon", "/usr/bin/cnmon"),),
    )


def container_edits(
    devices: Sequence[Device],
    quotas: Sequence[int],
    files: QuotaFiles | None,
    options: InjectionOptions = InjectionOptions(),
    extra_env: Mapping[str, str] | None = None,
) -> ContainerEdits:
    """Edits that give a container ``devices`` (in this order) limited to ``quotas`` bytes each.

    All devices must be of one vendor (a claim request or a device-plugin allocation never mixes
    vendors). ``files`` is None when no quota is enforced (no interceptor env, no mounts).
    """
    if not devices:
        return ContainerEdits()
    vendors = {d.vendor for d in devices}
    if len(vendors) != 1:
        names = ", ".join(sorted(d.key for d in devices))
        raise ValueError(f"devices {names} mix vendors; one container request takes one vendor's devices")
    if len(quotas) != len(devices):
        raise ValueError(f"{len(quotas)} quotas for {len(devices)} devices")
    base = _vendor_edits(devices[0].vendor, devices, options.device_isolation)
    env = list(base.env)
    mounts = list(base.mounts)
    if files is not None:
        env.append(("HCS_QUOTA_FILE", files.quota_container_path))
        mounts.append(Mount(files.quota_host_path, files.quota_container_path, read_only=True))
        if files.shm_host_dir:
            # read-only: the ledger is lock state, nothing in the container ever writes the directory
            env.append(("HCS_SHM_DIR", files.shm_container_dir))
            mounts.append(Mount(files.shm_host_dir, files.shm_container_dir, read_only=True))
        if files.compute_host_dir:
            # shared by every container on the node: the per-device compute ledgers (compute.h)
            mounts.append(Mount(files.compute_host_dir, CONTAINER_COMPUTE_DIR, read_only=False))
        if options.interceptor_host_dir:
            env.append(("LD_PRELOAD", f"{CONTAINER_INTERCEPTOR_DIR}/{INTERCEPTOR_LIB}"))
            mounts.append(Mount(options.interceptor_host_dir, CONTAINER_INTERCEPTOR_DIR, read_only=True))
            if options.preload_host_path:
                mounts.append(Mount(options.preload_host_path, CONTAINER_LD_SO_PRELOAD, read_only=True))
    for k, v in (extra_env or {}).items():
        env.append((k, v))
    return ContainerEdits(env=tuple(env), device_nodes=base.device_nodes, mounts=tuple(mounts))
