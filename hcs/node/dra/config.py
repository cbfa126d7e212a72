"""The DRA driver's configuration (``node.dra`` in the HCS config), validated into a frozen dataclass."""

from __future__ import annotations

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
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.plugin_dir or f"/var/lib/kubelet/plugins/{self.driver_name}")

    @property
    def dra_socket(self) -> Path:
        return self.data_dir / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return Path(self.plugins_registry) / f"{self.driver_name}-reg.sock"

    @property
    def cdi_vendor(self) -> str:
        return self.driver_name

    @property
    def cdi_kind(self) -> str:
        return f"{self.driver_name}/device"

    def with_overrides(self, **kwargs: Any) -> DraConfig:
        return replace(self, **kwargs)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, node_name: str, source: str = "config node.dra") -> DraConfig:
        """Validate a camelCase mapping (the YAML section); every error names the field."""
        known = {
            "driverName", "pluginsRegistry", "pluginDir", "cdiDir", "mode", "memoryMin", "memoryStep",
            "partitionSizes", "interceptorHostDir", "deviceIsolation", "publishSlices", "publishClaimStatus",
            "resyncSeconds", "healthTimeoutSeconds", "claimCache",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not node_name:
            raise ConfigError(f"{source}: the node name is empty; pass --node-name or set NODE_NAME")

        def s(key: str, default: str) -> str:
            v = data.get(key, default)
            if not isinstance(v, str):
                raise ConfigError(f"{source}.{key}: expected a string, got {type(v).__name__}")
            return v

        def b(key: str, default: bool) -> bool:
            v = data.get(key, default)
            if not isinstance(v, bool):
                raise ConfigError(f"{source}.{key}: expected true or false, got {v!r}")
            return v

        def q(key: str, default: int) -> int:
            v = data.get(key, default)
            try:
                n = parse_bytes(v, field=f"{source}.{key}")
            except QuantityError as exc:
                raise ConfigError(str(exc)) from exc
            if n <= 0:
                raise ConfigError(f"{source}.{key}: must be > 0, got {v!r}")
            return n

        def num(key: str, default: float) -> float:
            v = data.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ConfigError(f"{source}.{key}: expected a positive number, got {v!r}")
            return float(v)

        driver = s("driverName", DEFAULT_DRIVER)
        if len(driver) > 63 or not _DNS_SUBDOMAIN.match(driver):
            raise ConfigError(
                f"{source}.driverName: {driver!r} is not a DNS subdomain of at most 63 characters "
                "(lowercase letters, digits, '-' and '.'), e.g. ai.compute"
            )
        mode = s("mode", "consumable")
        if mode not in MODES:
            raise ConfigError(f"{source}.mode: {mode!r} is not one of {', '.join(MODES)}")
        raw_parts = data.get("partitionSizes", [format_bytes(10 << 30)])
        if not isinstance(raw_parts, list) or not raw_parts:
            raise ConfigError(f"{source}.partitionSizes: expected a non-empty list such as [10Gi, 20Gi]")
        parts: list[int] = []
        for i, p in enumerate(raw_parts):
            try:
                n = parse_bytes(p, field=f"{source}.partitionSizes[{i}]")
            except QuantityError as exc:
                raise ConfigError(str(exc)) from exc
            if n <= 0:
                raise ConfigError(f"{source}.partitionSizes[{i}]: must be > 0, got {p!r}")
            parts.append(n)
        step = q("memoryStep", 1 << 30)
        mn = q("memoryMin", 1 << 30)
        return cls(
            node_name=node_name,
            driver_name=driver,
            plugins_registry=s("pluginsRegistry", cls.plugins_registry),
            plugin_dir=s("pluginDir", ""),
            cdi_dir=s("cdiDir", cls.cdi_dir),
            mode=mode,
            memory_min_bytes=mn,
            memory_step_bytes=step,
            partition_bytes=tuple(sorted(set(parts))),
            interceptor_host_dir=s("interceptorHostDir", cls.interceptor_host_dir),
            device_isolation=b("deviceIsolation", True),
            publish_slices=b("publishSlices", True),
            publish_claim_status=b("publishClaimStatus", True),
            claim_cache=b("claimCache", True),
            resync_s=num("resyncSeconds", 30.0),
            health_timeout_s=int(num("healthTimeoutSeconds", 30)),
        )
