"""The ``node`` section of the HCS config, validated into one frozen dataclass."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Any

from hcs.errors import ConfigError

_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class NodeConfig:
    nodeName: str = ""
    kubeconfig: str = ""  # "" = in-cluster when KUBERNETES_SERVICE_HOST is set, else no API server
    devicePluginDir: str = "/var/lib/kubelet/device-plugins"
    podResourcesSocket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    resourceName: str = "ai.compute/slot"
    socketName: str = "hcs-slot.sock"
    slotsPerDevice: int = 8
    stateDir: str = "/var/lib/hcs/node"
    # Per-container quota files and the interceptor's shared accounting dirs live on tmpfs (/run): they
    # are per running container, rewritten by the agent's recovery, and tmpfs keeps Allocate's file
    # writes and the interceptor's mmap'd counters off the disk.
    quotaDir: str = "/run/hcs/quota"
    shmDir: str = "/run/hcs/shm"
    interceptorDir: str = "/usr/local/hcs/lib"  # host dir of libhcs_interceptor.so; "" disables it
    # Compute limits (interceptor/README.md "Compute limits"): the default enforcement of a container's
    # tflops share (hard | burst; the pod annotation hcs.io/compute-policy overrides it), and the
    # node-wide directory of the per-device compute ledgers, mounted read-write into every container.
    computePolicy: str = "hard"
    computeDir: str = "/run/hcs/compute"
    cdiEnabled: bool = True
    cdiDir: str = "/var/run/cdi"
    cdiKind: str = "ai.compute/slot"
    deviceNodes: str = "existing"  # existing: pass host nodes that exist; all: pass every listed node
    deviceIsolation: bool = True  # False for the simulated drivers (they see every device; host indices)
    driverLibraries: bool = True  # mount the vendors' driver libraries found on the host (no vendor runtime)
    simProfile: str = ""  # simulated drivers: host path of the node profile, handed to containers
    reportInterval: float = 30.0
    metricsAddress: str = "0.0.0.0"
    metricsPort: int = 9464  # 0 disables /metrics
    assignmentSource: str = "local"  # local | allocator
    allocatorAddress: str = "hcs-allocator.hcs-system.svc:50051"
    # Caller identity towards the allocator (hcs/allocator/auth.py): a projected ServiceAccount token for
    # the audience hcs-allocator, re-read on rotation, and the CA of the allocator's TLS certificate.
    # Both "" = plaintext and anonymous (an allocator started with --insecure-dev).
    allocatorTokenFile: str = ""
    allocatorCAFile: str = ""
    healthPollInterval: float = 0.2
    kubeletWatchInterval: float = 0.15
    devicePlugin: bool = True  # False: DRA only (no slot resource, no kubelet device-plugin socket)
    cpuAffinity: str = ""  # "" | "auto" | cpuset list: pin the agent's threads (hcs/node/affinity.py)
    # Allocate with no assignment for the offered slots waits up to this long for it (re-asking the
    # source and reading the node's pods' signed records from the API server) before failing the pod:
    # the kubelet can admit a pod before the allocator replica the agent talks to has its reservation.
    allocateWaitSeconds: float = 5.0

    @property
    def kubelet_socket(self) -> str:
        return f"{self.devicePluginDir.rstrip('/')}/kubelet.sock"

    @property
    def plugin_socket(self) -> str:
        return f"{self.devicePluginDir.rstrip('/')}/{self.socketName}"


def node_config(section: dict[str, Any], source: str = "config", **overrides: Any) -> NodeConfig:
    """Validate the ``node`` section (plus non-None ``overrides`` from flags/env) into NodeConfig."""
    known = {f.name: f for f in fields(NodeConfig)}
    values: dict[str, Any] = {}
    merged = dict(section)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    for key, raw in merged.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{source}: unknown field 'node.{key}'; known fields: {', '.join(sorted(known))}")
        default = f.default
        try:
            if isinstance(default, bool):
                if isinstance(raw, str):
                    if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(raw)
                    raw = raw.lower() in ("true", "1", "yes")
                elif not isinstance(raw, bool):
                    raise ValueError(raw)
                values[key] = raw
            elif isinstance(default, int):
                values[key] = int(raw)
            elif isinstance(default, float):
                values[key] = float(raw)
            else:
                values[key] = str(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: field 'node.{key}' must be a {type(default).__name__}, got {raw!r}") from exc
    cfg = NodeConfig(**values)
    _check(cfg, source)
    return cfg


def _check(cfg: NodeConfig, source: str) -> None:
    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: field 'node.{field}' {why}")

    if not _RESOURCE.match(cfg.resourceName):
        raise bad("resourceName", f"must look like 'domain/name' (e.g. ai.compute/slot), got {cfg.resourceName!r}")
    if not _RESOURCE.match(cfg.cdiKind):
        raise bad("cdiKind", f"must look like 'vendor.com/class', got {cfg.cdiKind!r}")
    if "/" in cfg.socketName or not cfg.socketName.endswith(".sock"):
        raise bad("socketName", f"must be a file name ending in .sock, got {cfg.socketName!r}")
    if not 1 <= cfg.slotsPerDevice <= 256:
        raise bad("slotsPerDevice", f"must be 1..256, got {cfg.slotsPerDevice}")
    if cfg.reportInterval <= 0:
        raise bad("reportInterval", f"must be > 0 seconds, got {cfg.reportInterval}")
    if not 0 <= cfg.metricsPort <= 65535:
        raise bad("metricsPort", f"must be 0..65535, got {cfg.metricsPort}")
    if cfg.assignmentSource not in ("local", "allocator"):
        raise bad("assignmentSource", f"must be 'local' or 'allocator', got {cfg.assignmentSource!r}")
    if cfg.computePolicy not in ("hard", "burst"):
        raise bad("computePolicy", f"must be 'hard' or 'burst', got {cfg.computePolicy!r}")
    if cfg.deviceNodes not in ("existing", "all"):
        raise bad("deviceNodes", f"must be 'existing' or 'all', got {cfg.deviceNodes!r}")
    if not 0.01 <= cfg.healthPollInterval <= 5:
        raise bad("healthPollInterval", f"must be 0.01..5 seconds, got {cfg.healthPollInterval}")
    if not 0.01 <= cfg.kubeletWatchInterval <= 1:
        raise bad("kubeletWatchInterval", f"must be 0.01..1 seconds, got {cfg.kubeletWatchInterval}")
    if not 0 <= cfg.allocateWaitSeconds <= 60:
        raise bad("allocateWaitSeconds", f"must be 0..60 seconds, got {cfg.allocateWaitSeconds}")
    if len(cfg.plugin_socket) > 107:
        raise bad("devicePluginDir", f"+ socketName is {len(cfg.plugin_socket)} bytes; unix sockets allow 107")


def host_path_exists(path: str) -> bool:
    """Whether ``path`` exists on the node's host. In a container the host's root is mounted read-only at
    ``$HCS_HOST_ROOT`` (the chart: /host), so vendor driver dirs and device nodes the agent has no mount of
    are seen as the container runtime will see them; on the host itself (no variable) the path is checked
    as is."""
    root = os.environ.get("HCS_HOST_ROOT", "").rstrip("/")
    return os.path.exists(root + path if root and path.startswith("/") else path)
