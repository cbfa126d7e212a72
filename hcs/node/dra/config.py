"""The DRA driver's configuration (``node.dra`` in the HCS config), validated into a frozen dataclass."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hcs.errors import ConfigError, QuantityError
from hcs.quantity import format_bytes, parse_bytes

DEFAULT_DRIVER = "ai.compute"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

MODES = ("consumable", "partitioned")

#: AF_UNIX sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107
#: what a pod UID may contain to become part of a socket file name (Kubernetes UIDs are UUIDs)
_POD_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _fits(path: Path) -> bool:
    return len(os.fsencode(str(path))) <= MAX_SOCKET_PATH


def _short(pod_uid: str) -> str:
    """A short, stable stand-in for a pod UID when the full UID makes a socket path too long."""
    return hashlib.sha256(pod_uid.encode()).hexdigest()[:16]


def _per_pod_socket(directory: Path, names: tuple[str, ...], what: str, key: str) -> Path:
    """The first of ``names`` whose path fits AF_UNIX; a ConfigError naming the setting otherwise."""
    for name in names:
        if _fits(directory / name):
            return directory / name
    last = directory / names[-1]
    raise ConfigError(
        f"{key}: the {what} {last} is {len(os.fsencode(str(last)))} bytes even with a hashed pod UID; "
        f"unix sockets allow {MAX_SOCKET_PATH}: use a shorter {key}"
    )


@dataclass(frozen=True)
class DraConfig:
    node_name: str
    driver_name: str = DEFAULT_DRIVER
    #: kubelet plugin registration directory (the kubelet's plugin watcher scans it)
    plugins_registry: str = "/var/lib/kubelet/plugins_registry"
    #: this driver's data directory: dra.sock, checkpoint, per-claim quota files. Same path on host
    #: and in the DaemonSet container. Default: /var/lib/kubelet/plugins/<driver>
    plugin_dir: str = ""
    #: CDI spec directory the container runtime reads (dynamic specs)
    cdi_dir: str = "/var/run/cdi"
    #: consumable: one device per accelerator with consumable memory/tflops (DRAConsumableCapacity);
    #: partitioned: fixed partitions per accelerator through shared counters (DRAPartitionableDevices)
    mode: str = "consumable"
    #: request policy for memory in consumable mode
    memory_min_bytes: int = 1 << 30
    memory_step_bytes: int = 1 << 30
    #: partition sizes in partitioned mode (each accelerator also offers itself whole)
    partition_bytes: tuple[int, ...] = (10 << 30,)
    #: host dir holding libhcs_interceptor.so ("" = no preload)
    interceptor_host_dir: str = "/usr/local/hcs/lib"
    #: False for the simulated drivers (host indices in *_VISIBLE_DEVICES), see injection.py
    device_isolation: bool = True
    #: bind-mount the vendors' user-space driver libraries found on the host (no vendor container
    #: runtime needed); off when the vendor's runtime injects them
    driver_libraries: bool = True
    #: simulated drivers only: host path of the node profile, handed to containers (HCS_SIM_PROFILE)
    sim_profile: str = ""
    #: publish ResourceSlices (off when another component publishes them)
    publish_slices: bool = True
    #: record prepared devices in the claim's status.devices (DRAResourceClaimDeviceStatus)
    publish_claim_status: bool = True
    #: serve NodePrepareResources from a watch-fed cache of this node's allocated claims (claims.py);
    #: a miss, another UID or a broken watch still GETs the claim, so this only saves the round trip
    claim_cache: bool = True
    #: seconds between full slice resyncs (a watch triggers re-creation much sooner)
    resync_s: float = 30.0
    #: health_check_timeout_seconds sent on the health stream
    health_timeout_s: int = 30
    #: per-pod socket names (kubelet >= 1.33), so the old and the new plugin pod of a DaemonSet surge
    #: (maxSurge 1) serve side by side; needs ``pod_uid``
    rolling_update: bool = False
    #: this plugin pod's UID (downward API metadata.uid, env POD_UID); names the sockets with rolling_update
    pod_uid: str = ""
    #: KEP-5304: a DeviceMetadata file per claim request, bind-mounted read-only into the containers
    device_metadata: bool = False
    #: node-wide compute ledger dir (node.computeDir), mounted read-write into every container; a
    #: claim's consumed ``tflopsFP16`` is enforced through it ("" = no mount, no shared ledger)
    compute_dir: str = ""
    #: default compute policy (node.computePolicy); the pods' hcs.io/compute-policy overrides it
    compute_policy: str = "hard"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rolling_update:
            if not self.pod_uid:
                raise ConfigError(
                    "node.dra.rollingUpdate needs this pod's UID: set env POD_UID from the downward API "
                    "(valueFrom.fieldRef.fieldPath: metadata.uid) or node.dra.podUID"
                )
            if not _POD_UID.match(self.pod_uid):
                raise ConfigError(f"node.dra.podUID: {self.pod_uid!r} is not a pod UID (letters, digits, '-', '_', "
                                  "'.'); take it from the downward API (metadata.uid)")

    @property
    def data_dir(self) -> Path:
        return Path(self.plugin_dir or f"/var/lib/kubelet/plugins/{self.driver_name}")

    @property
    def dra_socket(self) -> Path:
        """``dra.sock``; ``dra-<podUID>.sock`` with rolling updates (hashed UID if the path is too long)."""
        if not self.rolling_update:
            return self.data_dir / "dra.sock"
        return _per_pod_socket(self.data_dir, (f"dra-{self.pod_uid}.sock", f"dra-{_short(self.pod_uid)}.sock"),
                               "DRA socket", "pluginDir")

    @property
    def registration_socket(self) -> Path:
        """``<driver>-reg.sock``; ``<driver>-<podUID>-reg.sock`` with rolling updates (hashed when too long)."""
        registry = Path(self.plugins_registry)
        if not self.rolling_update:
            return registry / f"{self.driver_name}-reg.sock"
        short = _short(self.pod_uid)
        return _per_pod_socket(registry, (
            f"{self.driver_name}-{self.pod_uid}-reg.sock",
            f"{self.driver_name}-{short}-reg.sock",
            # a 63-character driver name alone can overflow a deep registry dir
            f"{_short(self.driver_name + '/' + self.pod_uid)}-reg.sock",
        ), "registration socket", "pluginsRegistry")

    @property
    def cdi_vendor(self) -> str:
        return self.driver_name

    @property
    def cdi_kind(self) -> str:
        return f"{self.driver_name}/device"

    def with_overrides(self, **kwargs: Any) -> DraConfig:
        return replace(self, **kwargs)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, node_name: str, source: str = "config node.dra",
                     environ: Mapping[str, str] | None = None) -> DraConfig:
        """Validate a camelCase mapping (the YAML section); every error names the field.

        ``podUID`` defaults to env ``POD_UID`` (``environ``, default os.environ), so every runner
        (``hcs node``, ``python -m hcs.node.dra``) picks up the downward-API value the same way.
        """
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
        if not node_name:
            raise ConfigError(f"{source}: the node name is empty; pass --node-name or set NODE_NAME")
        f = _Fields(data, source)
        driver = _driver_name(f.text("driverName", DEFAULT_DRIVER), source)
        mode = f.text("mode", "consumable")
        if mode not in MODES:
            raise ConfigError(f"{source}.mode: {mode!r} is not one of {', '.join(MODES)}")
        parts = _partition_sizes(data.get("partitionSizes", [format_bytes(10 << 30)]), source)
        step = f.size("memoryStep", 1 << 30)
        mn = f.size("memoryMin", 1 << 30)
        rolling = f.flag("rollingUpdate", False)
        env = os.environ if environ is None else environ
        pod_uid = _pod_uid(f.text("podUID", env.get("POD_UID", "")).strip(), rolling, source)
        cfg = cls(
            node_name=node_name,
            driver_name=driver,
            plugins_registry=f.text("pluginsRegistry", cls.plugins_registry),
            plugin_dir=f.text("pluginDir", ""),
            cdi_dir=f.text("cdiDir", cls.cdi_dir),
            mode=mode,
            memory_min_bytes=mn,
            memory_step_bytes=step,
            partition_bytes=parts,
            interceptor_host_dir=f.text("interceptorHostDir", cls.interceptor_host_dir),
            device_isolation=f.flag("deviceIsolation", True),
            publish_slices=f.flag("publishSlices", True),
            publish_claim_status=f.flag("publishClaimStatus", True),
            claim_cache=f.flag("claimCache", True),
            resync_s=f.positive("resyncSeconds", 30.0),
            health_timeout_s=int(f.positive("healthTimeoutSeconds", 30)),
            rolling_update=rolling,
            pod_uid=pod_uid,
            device_metadata=f.flag("deviceMetadata", False),
            driver_libraries=f.flag("driverLibraries", True),
            sim_profile=f.text("simProfile", ""),
        )
        try:  # with rolling updates both socket paths must fit AF_UNIX (the hashed fallbacks usually do)
            _ = (cfg.dra_socket, cfg.registration_socket)
        except ConfigError as exc:
            raise ConfigError(f"{source}.{exc}") from exc
        return cfg


#: the keys of the ``node.dra`` section
_FIELDS = frozenset({
    "driverName", "pluginsRegistry", "pluginDir", "cdiDir", "mode", "memoryMin", "memoryStep",
    "partitionSizes", "interceptorHostDir", "deviceIsolation", "publishSlices", "publishClaimStatus",
    "resyncSeconds", "healthTimeoutSeconds", "claimCache", "rollingUpdate", "podUID", "deviceMetadata",
    "driverLibraries", "simProfile",
})


class _Fields:
    """Typed reads of one config mapping; every error names ``source.key``."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source

    def text(self, key: str, default: str) -> str:
        v = self.data.get(key, default)
        if not isinstance(v, str):
            raise ConfigError(f"{self.source}.{key}: expected a string, got {type(v).__name__}")
        return v

    def flag(self, key: str, default: bool) -> bool:
        v = self.data.get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.source}.{key}: expected true or false, got {v!r}")
        return v

    def size(self, key: str, default: int) -> int:
        """A positive byte quantity (``1Gi``, ``512Mi``, a number)."""
        return _positive_bytes(self.data.get(key, default), f"{self.source}.{key}")

    def positive(self, key: str, default: float) -> float:
        v = self.data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise ConfigError(f"{self.source}.{key}: expected a positive number, got {v!r}")
        return float(v)


def _positive_bytes(value: Any, where: str) -> int:
    try:
        n = parse_bytes(value, field=where)
    except QuantityError as exc:
        raise ConfigError(str(exc)) from exc
    if n <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")
    return n


def _driver_name(driver: str, source: str) -> str:
    if len(driver) > 63 or not _DNS_SUBDOMAIN.match(driver):
        raise ConfigError(
            f"{source}.driverName: {driver!r} is not a DNS subdomain of at most 63 characters "
            "(lowercase letters, digits, '-' and '.'), e.g. ai.compute"
        )
    return driver


def _partition_sizes(raw: Any, source: str) -> tuple[int, ...]:
    """``partitionSizes``: a non-empty list of positive byte quantities, sorted, without repeats."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}.partitionSizes: expected a non-empty list such as [10Gi, 20Gi]")
    return tuple(sorted({_positive_bytes(p, f"{source}.partitionSizes[{i}]") for i, p in enumerate(raw)}))


def _pod_uid(pod_uid: str, rolling: bool, source: str) -> str:
    """Rolling updates name their sockets after this pod's UID: it must be there and look like one."""
    if rolling and not pod_uid:
        raise ConfigError(
            f"{source}.rollingUpdate: true needs this pod's UID: set env POD_UID from the downward API "
            "(env: [{name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}]) or podUID; "
            "or set rollingUpdate: false"
        )
    if rolling and not _POD_UID.match(pod_uid):
        raise ConfigError(f"{source}.podUID: {pod_uid!r} is not a pod UID (letters, digits, '-', '_', '.'); "
                          "take it from the downward API (metadata.uid)")
    return pod_uid
