"""Vendor runtime injection: which env, device nodes and mounts a container needs for its devices.

One module for both request paths (device plugin ``Allocate`` and DRA CDI specs, both written by
hcs/node/cdi.py). ``container_edits`` is a pure function of the devices, their in-container order,
the per-device VRAM quota and the node's ``InjectionOptions``; the callers do the I/O (writing the
quota file, checking host paths exist, building CDI or gRPC messages). What each vendor needs lives in
its own module as ``RUNTIME`` (``VendorRuntime``: env, control nodes, mounts, driver libraries).

Without a vendor container runtime. ``discover_driver_libraries`` (run once when the agent starts)
finds each vendor's user-space driver libraries on the host as ``nvidia-ctk cdi generate`` does: by
soname in the host's linker cache, else in the vendor's install dirs. They are bind-mounted read-only
at their soname paths, and their directories go into ``LD_LIBRARY_PATH`` rather than an ldconfig
createContainer hook: the device-plugin path cannot carry OCI hooks, a hook is one more host binary
the runtime runs for every container, and it writes the container's rootfs (read-only rootfs, images
without ldconfig). The price is that an image's own ``LD_LIBRARY_PATH`` is replaced.

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

import importlib
import logging
import os
import platform
import posixpath
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hcs.devices.model import Device, Vendor
from hcs.fileio import atomic_write

log = logging.getLogger(__name__)

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
    #: user-space driver libraries per vendor (``discover_driver_libraries``), bind-mounted read-only
    driver_libraries: Mapping[Vendor, tuple[Mount, ...]] = field(default_factory=dict)
    #: simulated drivers only: host file of the node profile, mounted read-only at CONTAINER_SIM_PROFILE
    #: with HCS_SIM_PROFILE pointing at it, so the simulated libraries work without pod env
    sim_profile_host_path: str = ""


@dataclass(frozen=True)
class QuotaFiles:
    """Host and container path of the quota file and the shared accounting directory."""

    quota_host_path: str
    quota_container_path: str
    shm_host_dir: str = ""
    shm_container_dir: str = ""
    #: node-wide compute ledger dir, mounted read-write at CONTAINER_COMPUTE_DIR ("" = none)
    compute_host_dir: str = ""


#: Where a simulated node's profile appears in its containers (``InjectionOptions.sim_profile_host_path``).
CONTAINER_SIM_PROFILE = "/etc/hcs/sim-profile.json"


@dataclass(frozen=True)
class VendorRuntime:
    """What a container needs to use one vendor's devices without the vendor's container runtime.

    Each vendor's home module (``hcs/devices/<vendor>.py``) defines one as ``RUNTIME``; a new vendor
    is a new module. Paths are the vendor's documented install locations; those missing on a node are
    left out by the caller (a CDI spec naming a missing host path fails the container).
    """

    #: ``(env var, what it lists)``: ``uuid`` the devices' UUIDs, ``host`` host indices, ``container``
    #: in-container ordinals (host indices without device isolation, see the module doc)
    visible_devices: tuple[tuple[str, str], ...]
    #: fixed env, e.g. CUDA_DEVICE_ORDER
    env: tuple[tuple[str, str], ...] = ()
    #: device nodes every container of the vendor needs besides its devices' own
    control_nodes: tuple[str, ...] = ()
    #: host files or directories (tools, driver trees) mounted read-only at the same path
    mounts: tuple[str, ...] = ()
    #: directories put first in LD_LIBRARY_PATH (before those of the discovered libraries)
    library_path: tuple[str, ...] = ()
    #: user-space driver libraries by soname, found in the host's linker cache or ``library_dirs``
    libraries: tuple[str, ...] = ()
    #: the vendor's install directories, searched when the linker cache does not know a soname
    library_dirs: tuple[str, ...] = ()


def vendor_runtime(vendor: Vendor) -> VendorRuntime:
    """The vendor's ``RUNTIME``, from its home module ``hcs.devices.<vendor>``."""
    runtime = importlib.import_module(f"hcs.devices.{vendor.value}").RUNTIME
    assert isinstance(runtime, VendorRuntime)
    return runtime


#: ``ldconfig -p`` ABI tag of this machine's native libraries (32-bit and foreign entries are skipped)
_ABI_TAGS = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit", "s390x": "64bit"}
_LDCACHE_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(/\S+)\s*$")


def parse_ldcache(text: str, machine: str = "") -> dict[str, list[str]]:
    """``ldconfig -p`` output as soname -> paths, native ABI only, in cache order (the loader's)."""
    tag = _ABI_TAGS.get(machine or platform.machine(), "")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _LDCACHE_LINE.match(line)
        if m is None:
            continue
        soname, flags, path = m.groups()
        if tag and tag not in (f.strip() for f in flags.split(",")):
            continue
        out.setdefault(soname, []).append(path)
    return out


def read_ldcache(root: str = "/") -> dict[str, list[str]]:
    """The linker cache of the host whose file system is at ``root`` (the agent's DaemonSet mounts
    it at e.g. /host). Empty, with a warning, when ``ldconfig`` cannot read it."""
    cache = posixpath.join(root, "etc/ld.so.cache")
    ldconfig = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), "ldconfig")
    try:
        res = subprocess.run([ldconfig, "-p", "-C", cache], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot read the linker cache %s: %s; driver libraries only from the vendors' dirs", cache, exc)
        return {}
    if res.returncode != 0:
        log.warning("ldconfig -p -C %s failed: %s", cache, res.stderr.strip()[:200])
        return {}
    return parse_ldcache(res.stdout)


def discover_libraries(vendor: Vendor, ldcache: Mapping[str, Sequence[str]], root: str = "/") -> tuple[Mount, ...]:
    """The vendor's user-space driver libraries present on the host, as read-only mounts.

    Each soname is looked up as ``nvidia-ctk cdi generate`` does: the linker cache first, then the
    vendor's install dirs. The mount's container path is the soname path (so ``dlopen("libcuda.so.1")``
    finds it through LD_LIBRARY_PATH); its host path is the file the soname link resolves to (a bind
    mount of a symlink would follow it anyway, this makes the spec say what is mounted).
    """
    rt = vendor_runtime(vendor)
    found: list[Mount] = []
    for soname in rt.libraries:
        candidates = [*ldcache.get(soname, ()), *(posixpath.join(d, soname) for d in rt.library_dirs)]
        for path in candidates:
            real = _resolve_in_root(root, path)
            if real is not None:
                found.append(Mount(real, path, read_only=True))
                break
    return tuple(found)


def _resolve_in_root(root: str, path: str) -> str | None:
    """``path`` resolved through symlinks as the host sees it (absolute link targets stay inside
    ``root``), as a host path; None unless it ends at a regular file."""
    root = os.path.abspath(root)
    todo = [c for c in path.split("/") if c]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        try:
            target = os.readlink(here)
        except OSError:  # not a link (or missing: caught below)
            done.append(part)
            continue
        hops += 1
        if hops > 40:  # ELOOP
            return None
        if target.startswith("/"):
            done = []
        todo = [c for c in target.split("/") if c] + todo
    if not os.path.isfile(os.path.join(root, *done)):
        return None
    return "/" + "/".join(done)


def discover_driver_libraries(vendors: Iterable[Vendor], root: str = "/") -> dict[Vendor, tuple[Mount, ...]]:
    """``discover_libraries`` for each vendor, reading the host's linker cache once."""
    wanted = list(dict.fromkeys(vendors))
    if not wanted:
        return {}
    cache = read_ldcache(root)
    out = {v: discover_libraries(v, cache, root) for v in wanted}
    for v, mounts in out.items():
        if mounts:
            log.info("%s driver libraries on this host: %s", v.value, ", ".join(m.container_path for m in mounts))
    return out


def host_root() -> str:
    """Where the host's file system is seen from here: ``$HCS_HOST_ROOT`` in the agent's container
    (the chart mounts the host's / at /host), else /."""
    return os.environ.get("HCS_HOST_ROOT", "").rstrip("/") or "/"


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


def _under(path: str, dirs: Sequence[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _vendor_edits(vendor: Vendor, devices: Sequence[Device], options: InjectionOptions) -> ContainerEdits:
    rt = vendor_runtime(vendor)
    own = [n for d in devices for n in d.device_nodes]
    lists = {
        "uuid": ",".join(d.uuid for d in devices),
        "host": ",".join(str(d.index) for d in devices),
        "container": _selection(devices, options.device_isolation),
    }
    env = [(name, lists[what]) for name, what in rt.visible_devices]
    env += list(rt.env)
    # driver libraries found on the host (discover_libraries), each at its soname path; one inside a
    # directory the vendor mounts whole is already there
    libs = tuple(m for m in options.driver_libraries.get(vendor, ()) if not _under(m.container_path, rt.mounts))
    search = [*rt.library_path, *(posixpath.dirname(m.container_path) for m in libs)]
    if search:
        env.append(("LD_LIBRARY_PATH", ":".join(dict.fromkeys(search))))
    return ContainerEdits(
        env=tuple(env),
        device_nodes=_nodes([*own, *rt.control_nodes]),
        mounts=(*(Mount(p, p) for p in rt.mounts), *libs),
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
    base = _vendor_edits(devices[0].vendor, devices, options)
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
    if options.sim_profile_host_path:
        env.append(("HCS_SIM_PROFILE", CONTAINER_SIM_PROFILE))
        mounts.append(Mount(options.sim_profile_host_path, CONTAINER_SIM_PROFILE, read_only=True))
    for k, v in (extra_env or {}).items():
        env.append((k, v))
    return ContainerEdits(env=tuple(env), device_nodes=base.device_nodes, mounts=tuple(mounts))
