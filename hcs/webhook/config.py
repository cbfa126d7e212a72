"""The ``webhook`` config section, validated into frozen dataclasses at start-up.

Every key has a default, so ``hcs webhook --cert-file ... --key-file ...`` runs without a config
file. Errors name the field and say what is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from hcs.errors import ConfigError, QuantityError
from hcs.podspec import RESOURCE_DOMAIN
from hcs.quantity import parse_bytes

VRAM = "ai.compute/vram"
TFLOPS = "ai.compute/tflops-fp16"
DEFAULT_SLOT = "ai.compute/slot"

# Pod annotations users write (design brief) and the ones the webhook adds.
ANN_TOPOLOGY = "hcs.io/topology-preference"
ANN_VENDOR = "hcs.io/vendor"
ANN_MODEL = "hcs.io/model"
ANN_POLICY = "hcs.io/scheduling-policy"
ANN_COMPUTE_POLICY = "hcs.io/compute-policy"  # hard | burst: how the tflops share is enforced
ANN_MODE = "hcs.io/mode"
ANN_ORIGINAL = "hcs.io/original-request"
HIGH_BANDWIDTH = "high-bandwidth"


class Mode(StrEnum):
    """How a pod's abstract request is served: the HCS device plugin + extender, or DRA claims."""

    DEVICE_PLUGIN = "device-plugin"
    DRA = "dra"


class FailurePolicy(StrEnum):
    """What to do when the island size cannot be learnt (allocator / API server down)."""

    OPEN = "open"  # admit with a warning
    CLOSED = "closed"  # deny with an explanation


@dataclass(frozen=True)
class DraSettings:
    device_class: str = "vram.ai.compute"
    driver: str = RESOURCE_DOMAIN
    island_attribute: str = "ai.compute/island"
    vendor_attribute: str = "vendor"
    model_attribute: str = "model"
    memory_capacity: str = "memory"
    tflops_capacity: str = "tflopsFP16"  # capacity names are C identifiers
    #: Device counts offered as ``firstAvailable`` alternatives for one request (in order).
    device_counts: tuple[int, ...] = (1, 2, 4, 8)
    #: A split alternative is only offered when each device still gets at least this much VRAM, so
    #: small requests stay on one device (as on the device-plugin path) and only big ones span devices.
    min_split_bytes: int = 16 * 2**30
    #: VRAM is rounded up to this step per device (the DRA driver's requestPolicy step).
    step_bytes: int = 2**30


#: /dev and /proc (devices and other processes), HCS's run, state and library dirs, the kubelet's
#: device-plugin and CDI dirs.
DEFAULT_PROTECTED_HOST_PATHS = ("/dev", "/proc", "/run/hcs", "/var/run/hcs", "/var/lib/hcs", "/usr/local/hcs",
                                "/var/lib/kubelet/device-plugins", "/var/run/cdi", "/etc/cdi")


@dataclass(frozen=True)
class WebhookConfig:
    host: str = "0.0.0.0"
    port: int = 9443
    cert_file: str = ""
    key_file: str = ""
    #: Seconds between checks of the certificate files for changes (reload without restart).
    cert_check_s: float = 5.0
    mode: Mode = Mode.DEVICE_PLUGIN
    #: Namespace label selecting the mode per namespace (value ``dra`` or ``device-plugin``).
    mode_label: str = ANN_MODE
    scheduler_name: str = "hcs-scheduler"
    slot_resource: str = DEFAULT_SLOT
    deny_privileged_with_quota: bool = True
    allocator_failure: FailurePolicy = FailurePolicy.OPEN
    #: gRPC target of the allocator (``host:port`` or ``unix:/path``); empty: read ComputeNodes.
    allocator_address: str = ""
    #: Projected ServiceAccount token (audience hcs-allocator) sent to the allocator; "" = anonymous.
    allocator_token_file: str = ""
    #: CA of the allocator's TLS certificate; "" = plaintext (an ``--insecure-dev`` allocator).
    allocator_ca_file: str = ""
    #: ``namespace/name`` of the ConfigMap mapping images to per-vendor images; empty: off.
    image_map: str = ""
    cache_ttl_s: float = 10.0
    max_body_bytes: int = 3 * 2**20
    max_depth: int = 100
    kubeconfig: str = ""
    #: Fixed largest-island VRAM (bytes) instead of asking the cluster (air-gapped set-ups, benchmarks).
    largest_island_bytes: int | None = None
    #: Extra model names accepted in ``hcs.io/model`` besides the catalog's.
    extra_models: tuple[str, ...] = ()
    dra: DraSettings = field(default_factory=DraSettings)
    #: Users (``system:serviceaccount:NS:NAME``) that may write a pod's ``hcs.io/assignment`` record: the
    #: allocator. Everyone else is denied (the chart's ValidatingAdmissionPolicy has the same rule).
    assignment_writers: tuple[str, ...] = ()
    #: Users that may write it only on pods bound to the node named in their token (node agents).
    node_assignment_writers: tuple[str, ...] = ()
    #: Host paths a quota'd pod may not mount (nor any path inside or above them).
    protected_host_paths: tuple[str, ...] = DEFAULT_PROTECTED_HOST_PATHS

    def with_overrides(self, **changes: Any) -> WebhookConfig:
        return replace(self, **changes)


_KEYS = {
    "listen", "certFile", "keyFile", "certCheckSeconds", "mode", "modeLabel", "schedulerName",
    "slotResource", "denyPrivilegedWithQuota", "allocatorFailurePolicy", "allocatorAddress", "imageMap",
    "allocatorTokenFile", "allocatorCAFile",
    "cacheTTLSeconds", "maxBodyBytes", "maxDepth", "kubeconfig", "extraModels", "dra", "failurePolicy",
    "largestIsland", "assignmentWriters", "nodeAssignmentWriters", "protectedHostPaths",
}
_DRA_KEYS = {
    "deviceClass", "driver", "islandAttribute", "vendorAttribute", "modelAttribute", "memoryCapacity",
    "tflopsCapacity", "deviceCounts", "minSplit", "step",
}


def _str(raw: Mapping[str, Any], key: str, default: str, where: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {type(value).__name__} {value!r}")
    return value


def _bool(raw: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _num(raw: Mapping[str, Any], key: str, default: float, where: str, *, minimum: float = 0) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{where}.{key}: expected a number >= {minimum}, got {value!r}")
    return float(value)


def _bytes(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    try:
        n = parse_bytes(value, field=f"{where}.{key}")
    except QuantityError as exc:
        raise ConfigError(str(exc)) from exc
    if n <= 0:
        raise ConfigError(f"{where}.{key}: must be positive, got {value!r}")
    return n


def _enum(raw: Mapping[str, Any], key: str, default: StrEnum, where: str) -> Any:
    value = raw.get(key, default.value)
    cls = type(default)
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise ConfigError(f"{where}.{key}: {value!r} is not one of {choices}") from None


def _unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")


def _dra(raw: Any, where: str) -> DraSettings:
    if raw is None:
        return DraSettings()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    _unknown(raw, _DRA_KEYS, where)
    d = DraSettings()
    counts_raw = raw.get("deviceCounts", list(d.device_counts))
    if (
        not isinstance(counts_raw, list)
        or not counts_raw
        or len(counts_raw) > 8
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts_raw)
        or len(set(counts_raw)) != len(counts_raw)
    ):
        raise ConfigError(
            f"{where}.deviceCounts: expected 1 to 8 distinct positive integers such as [1, 2, 4, 8], "
            f"got {counts_raw!r}"
        )
    driver = _str(raw, "driver", d.driver, where)
    return DraSettings(
        device_class=_str(raw, "deviceClass", f"vram.{driver}", where),
        driver=driver,
        island_attribute=_str(raw, "islandAttribute", f"{driver}/island", where),
        vendor_attribute=_str(raw, "vendorAttribute", d.vendor_attribute, where),
        model_attribute=_str(raw, "modelAttribute", d.model_attribute, where),
        memory_capacity=_str(raw, "memoryCapacity", d.memory_capacity, where),
        tflops_capacity=_str(raw, "tflopsCapacity", d.tflops_capacity, where),
        device_counts=tuple(counts_raw),
        min_split_bytes=_bytes(raw, "minSplit", d.min_split_bytes, where),
        step_bytes=_bytes(raw, "step", d.step_bytes, where),
    )


def webhook_config(raw: Mapping[str, Any], *, source: str = "config") -> WebhookConfig:
    """Validate the ``webhook`` section (``raw`` is that section's mapping)."""
    where = f"{source}: webhook"
    _unknown(raw, _KEYS, where)
    d = WebhookConfig()
    listen = _str(raw, "listen", f"{d.host}:{d.port}", where)
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}.listen: expected HOST:PORT such as 0.0.0.0:9443, got {listen!r}")
    slot = _str(raw, "slotResource", d.slot_resource, where)
    if "/" not in slot:
        raise ConfigError(f"{where}.slotResource: expected a domain-qualified resource such as "
                          f"ai.compute/slot, got {slot!r}")
    image_map = _str(raw, "imageMap", d.image_map, where)
    if image_map and image_map.count("/") != 1:
        raise ConfigError(f"{where}.imageMap: expected NAMESPACE/NAME of a ConfigMap, got {image_map!r}")
    extra = raw.get("extraModels", [])
    if not isinstance(extra, list) or not all(isinstance(m, str) for m in extra):
        raise ConfigError(f"{where}.extraModels: expected a list of model names, got {extra!r}")
    return WebhookConfig(
        host=host.strip("[]") or "0.0.0.0",
        port=int(port_text),
        cert_file=_str(raw, "certFile", d.cert_file, where),
        key_file=_str(raw, "keyFile", d.key_file, where),
        cert_check_s=_num(raw, "certCheckSeconds", d.cert_check_s, where, minimum=0.1),
        mode=_enum(raw, "mode", d.mode, where),
        mode_label=_str(raw, "modeLabel", d.mode_label, where),
        scheduler_name=_str(raw, "schedulerName", d.scheduler_name, where),
        slot_resource=slot,
        deny_privileged_with_quota=_bool(raw, "denyPrivilegedWithQuota", d.deny_privileged_with_quota, where),
        allocator_failure=_enum(raw, "allocatorFailurePolicy", d.allocator_failure, where),
        allocator_address=_str(raw, "allocatorAddress", d.allocator_address, where),
        allocator_token_file=_str(raw, "allocatorTokenFile", d.allocator_token_file, where),
        allocator_ca_file=_str(raw, "allocatorCAFile", d.allocator_ca_file, where),
        image_map=image_map,
        cache_ttl_s=_num(raw, "cacheTTLSeconds", d.cache_ttl_s, where),
        max_body_bytes=int(_num(raw, "maxBodyBytes", d.max_body_bytes, where, minimum=1024)),
        max_depth=int(_num(raw, "maxDepth", d.max_depth, where, minimum=8)),
        kubeconfig=_str(raw, "kubeconfig", d.kubeconfig, where),
        extra_models=tuple(extra),
        largest_island_bytes=_bytes(raw, "largestIsland", 1, where) if "largestIsland" in raw else None,
        dra=_dra(raw.get("dra"), f"{where}.dra"),
        assignment_writers=_strs(raw, "assignmentWriters", d.assignment_writers, where),
        node_assignment_writers=_strs(raw, "nodeAssignmentWriters", d.node_assignment_writers, where),
        protected_host_paths=_strs(raw, "protectedHostPaths", d.protected_host_paths, where, absolute=True),
    )


def _strs(raw: Mapping[str, Any], key: str, default: tuple[str, ...], where: str, *,
          absolute: bool = False) -> tuple[str, ...]:
    value = raw.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key}: expected a list of non-empty strings, got {value!r}")
    if absolute and not all(v.startswith("/") for v in value):
        raise ConfigError(f"{where}.{key}: expected absolute paths such as /dev, got {value!r}")
    return tuple(value)
