"""Validation of ``ai.compute/*`` requests: pure functions from a pod template to a verdict.

Each denial says what is wrong, where (container / annotation) and how to fix it. The island-size
check asks a :class:`~hcs.webhook.capacity.IslandCapacity` for the cluster's islands and compares each
container's VRAM with the largest island among the vendors ``hcs.io/vendor`` allows (all when unset);
the denial names that island's node. When the source is unreachable the configured failure policy
decides (admit with a warning, or deny).
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache

from hcs.devices.catalog import default_catalog
from hcs.devices.injection import shadows_managed_path
from hcs.devices.model import Vendor
from hcs.errors import QuantityError
from hcs.podspec import ContainerRef, PodTemplate, as_dict, as_list, containers, split_selector
from hcs.quantity import format_bytes, parse_quantity
from hcs.webhook.capacity import CapacityUnavailable, IslandCapacity
from hcs.webhook.config import (
    ANN_COMPUTE_POLICY,
    ANN_MODEL,
    ANN_ORIGINAL,
    ANN_POLICY,
    ANN_TOPOLOGY,
    ANN_VENDOR,
    HIGH_BANDWIDTH,
    TFLOPS,
    VRAM,
    FailurePolicy,
    WebhookConfig,
)

TOPOLOGY_VALUES = (HIGH_BANDWIDTH, "none")
POLICY_VALUES = ("binpack", "spread")
COMPUTE_POLICY_VALUES = ("hard", "burst")


@dataclass(frozen=True)
class Verdict:
    denials: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.denials

    def merge(self, other: Verdict) -> Verdict:
        return Verdict(self.denials + other.denials, self.warnings + other.warnings)


@dataclass(frozen=True)
class Amounts:
    """A container's parsed request, normalised to what the cluster will reserve."""

    container: ContainerRef
    vram_bytes: int | None  # reserved VRAM (request, else limit)
    tflops: int | None  # reserved A100-equivalent TFLOPS, whole (rounded up)
    notes: tuple[str, ...] = field(default=())  # normalisation the user should know about


@cache
def catalog_models() -> frozenset[str]:
    """Model ids and exchange-rate keys from the device catalog (lower case)."""
    cat = default_catalog()
    return frozenset({m.id.lower() for m in cat.models} | {m.rate_key.lower() for m in cat.models})


def _quantity(c: ContainerRef, section: str, name: str, raw: object, out: list[str]) -> Fraction | None:
    where = f"{c.where} resources.{section}[{name}]"
    try:
        value = parse_quantity(raw if isinstance(raw, str | int | float) else str(raw), field=where)
    except QuantityError as exc:
        out.append(f"{exc}")
        return None
    if value <= 0:
        out.append(f"{where}: {raw!r} must be positive; remove the resource or ask for more than 0")
        return None
    return value


def container_amounts(c: ContainerRef, cfg: WebhookConfig) -> tuple[Amounts | None, Verdict]:
    """Parse and check one container's ``ai.compute/*`` requests and limits."""
    denials: list[str] = []
    notes: list[str] = []
    known = {VRAM, TFLOPS, cfg.slot_resource}
    for section, values in (("requests", c.requests), ("limits", c.limits)):
        for name in values:
            if name not in known:
                denials.append(
                    f"{c.where} resources.{section}[{name}]: unknown resource; HCS understands "
                    f"{VRAM} (e.g. 16Gi) and {TFLOPS} (A100-equivalent TFLOPS, e.g. \"100\")"
                )
    amounts: dict[str, Fraction | None] = {}
    for name in (VRAM, TFLOPS):
        req = _quantity(c, "requests", name, c.requests[name], denials) if name in c.requests else None
        lim = _quantity(c, "limits", name, c.limits[name], denials) if name in c.limits else None
        if req is not None and lim is not None and lim < req:
            shown = (format_bytes(math.ceil(req)), format_bytes(math.ceil(lim))) if name == VRAM else (
                str(c.requests[name]), str(c.limits[name]))
            denials.append(
                f"{c.where}: {name} limit {shown[1]} is smaller than its request {shown[0]}; "
                f"set limits[{name}] >= requests[{name}] (or drop the limit)"
            )
        elif req is not None and lim is not None and lim > req:
            notes.append(f"{c.where}: {name} limit lowered to the request {c.requests[name]}; accelerator "
                         "resources are not overcommitted, the request is what is reserved")
        amounts[name] = req if req is not None else lim
    if denials:
        return None, Verdict(tuple(denials))
    vram = amounts[VRAM]
    tflops = amounts[TFLOPS]
    tflops_whole = None
    if tflops is not None:
        tflops_whole = math.ceil(tflops)
        if tflops_whole != tflops:
            notes.append(f"{c.where}: {TFLOPS} {float(tflops):g} rounded up to {tflops_whole}; "
                         "extended resources are whole numbers")
    vram_bytes = math.ceil(vram) if vram is not None else None
    return Amounts(c, vram_bytes, tflops_whole, tuple(notes)), Verdict((), ())


def template_amounts(t: PodTemplate, cfg: WebhookConfig) -> tuple[list[Amounts], Verdict]:
    out: list[Amounts] = []
    verdict = Verdict()
    for c in containers(t.spec):
        if not c.asks_accelerator:
            continue
        amounts, v = container_amounts(c, cfg)
        verdict = verdict.merge(v)
        if amounts is not None and (amounts.vram_bytes is not None or amounts.tflops is not None):
            out.append(amounts)
    return out, verdict


def _check_selector(ann: str, value: str, known: Iterable[str], what: str, t: PodTemplate) -> list[str]:
    include, exclude = split_selector(value)
    known_set = set(known)
    where = t.field(f"metadata.annotations[{ann}]")
    errors = []
    if not include and not exclude:
        errors.append(f"{where}: empty {what} list; write e.g. '{sorted(known_set)[0]}' or remove the annotation")
    unknown = [n for n in include + exclude if n not in known_set]
    if unknown:
        errors.append(
            f"{where}: unknown {what} {', '.join(repr(n) for n in unknown)}; known: {', '.join(sorted(known_set))}"
        )
    both = sorted(set(include) & set(exclude))
    if both:
        errors.append(f"{where}: {', '.join(both)} is both included and excluded; keep one")
    return errors


def check_annotations(t: PodTemplate, cfg: WebhookConfig) -> list[str]:
    errors: list[str] = []
    ann = t.annotations
    if ANN_VENDOR in ann:
        errors += _check_selector(ANN_VENDOR, ann[ANN_VENDOR], [v.value for v in Vendor], "vendor", t)
    if ANN_MODEL in ann:
        models = catalog_models() | {m.lower() for m in cfg.extra_models}
        if models:
            errors += _check_selector(ANN_MODEL, ann[ANN_MODEL], models, "model", t)
    if ANN_TOPOLOGY in ann and ann[ANN_TOPOLOGY].strip().lower() not in TOPOLOGY_VALUES:
        errors.append(f"{t.field(f'metadata.annotations[{ANN_TOPOLOGY}]')}: {ann[ANN_TOPOLOGY]!r} is not "
                      f"one of {', '.join(TOPOLOGY_VALUES)}")
    if ANN_POLICY in ann and ann[ANN_POLICY].strip().lower() not in POLICY_VALUES:
        errors.append(f"{t.field(f'metadata.annotations[{ANN_POLICY}]')}: {ann[ANN_POLICY]!r} is not "
                      f"one of {', '.join(POLICY_VALUES)}")
    if ANN_COMPUTE_POLICY in ann and ann[ANN_COMPUTE_POLICY].strip().lower() not in COMPUTE_POLICY_VALUES:
        errors.append(f"{t.field(f'metadata.annotations[{ANN_COMPUTE_POLICY}]')}: {ann[ANN_COMPUTE_POLICY]!r} "
                      f"is not one of {', '.join(COMPUTE_POLICY_VALUES)}")
    return errors


#: Capabilities that let a container get around the in-container quota: SYS_ADMIN (mounts, namespaces,
#: device cgroups), SYS_PTRACE (rewrite another process or the interceptor's state), SYS_RAWIO and
#: SYS_MODULE (talk to the device or the kernel directly), ALL (every one of them).
QUOTA_BREAKING_CAPS = ("SYS_ADMIN", "SYS_PTRACE", "SYS_RAWIO", "SYS_MODULE", "ALL")
ALL_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
DRA_CLAIM_PREFIX = "hcs-"


def _cap_name(value: object) -> str:
    """``cap_sys_admin`` / ``CAP_SYS_ADMIN`` / `` sys_admin `` → ``SYS_ADMIN`` (the kernel ignores case)."""
    name = str(value).strip().upper()
    return name[4:] if name.startswith("CAP_") else name


def is_quota_pod(t: PodTemplate) -> bool:
    """A pod held to an HCS quota: it asks for ``ai.compute/*``, or the webhook translated it (DRA mode
    moves the request into ``hcs-*`` resource claims and records it in ``hcs.io/original-request``)."""
    if any(c.asks_accelerator for c in containers(t.spec)):
        return True
    if ANN_ORIGINAL in as_dict(t.metadata.get("annotations")):
        return True
    return any(str(as_dict(c).get("name", "")).startswith(DRA_CLAIM_PREFIX)
               for c in as_list(t.spec.get("resourceClaims")))


def _covers(host_path: str, protected: str) -> bool:
    """Mounting ``host_path`` exposes ``protected`` (the same dir, inside it, or an ancestor of it)."""
    hp = "/" + posixpath.normpath("/" + host_path).lstrip("/")
    pr = "/" + posixpath.normpath("/" + protected).lstrip("/")
    return hp == pr or hp.startswith(pr.rstrip("/") + "/") or pr.startswith(hp.rstrip("/") + "/")


def check_quota_escapes(t: PodTemplate, cfg: WebhookConfig, lists: tuple[str, ...] = ALL_CONTAINER_LISTS) -> Verdict:
    """What would let a quota'd pod leave its quota: privileged containers (init and ephemeral ones
    included), quota-breaking capabilities, explicit privilege escalation, the host's PID namespace,
    hostPath mounts of ``/dev``, ``/proc`` or HCS's own host directories, and volumeMounts that would
    cover the agent's in-container mounts (quota file, ledger, /etc/ld.so.preload). One line per finding:
    what, where (field path) and what to do. Callers apply it to quota'd pods only."""
    problems: list[str] = []
    spec = t.spec
    if spec.get("hostPID") is True:
        problems.append(f"{t.field('spec.hostPID')}: true lets the pod see and trace host processes, the HCS "
                        "node agent included; remove hostPID")
    for i, vol in enumerate(as_list(spec.get("volumes"))):
        hp = as_dict(as_dict(vol).get("hostPath")).get("path")
        if not isinstance(hp, str):
            continue
        hit = next((pr for pr in cfg.protected_host_paths if _covers(hp, pr)), None)
        if hit is not None:
            problems.append(f"{t.field(f'spec.volumes[{i}].hostPath.path')}: {hp!r} exposes the host's {hit}, "
                            "where a container can reach devices or HCS quota files directly; use a volume that "
                            "is not a hostPath of it")
    for list_name in lists:
        for i, raw in enumerate(as_list(spec.get(list_name))):
            c = as_dict(raw)
            name = c.get("name") if isinstance(c.get("name"), str) else f"#{i}"
            base = t.field(f"spec.{list_name}[{i}].securityContext")
            sc = as_dict(c.get("securityContext"))
            if sc.get("privileged") is True:
                problems.append(f"{base}.privileged (container {name!r}): a privileged container can open any "
                                "device and bypass the in-container quota; remove privileged: true")
            caps = as_dict(sc.get("capabilities")).get("add")
            for j, cap in enumerate(as_list(caps)):
                if _cap_name(cap) in QUOTA_BREAKING_CAPS:
                    problems.append(f"{base}.capabilities.add[{j}] (container {name!r}): {str(cap)[:40]!r} lets a "
                                    "container bypass the in-container quota; remove it from capabilities.add")
            for k, vm in enumerate(as_list(c.get("volumeMounts"))):
                mount_path = as_dict(vm).get("mountPath")
                if isinstance(mount_path, str) and shadows_managed_path(mount_path):
                    problems.append(f"{t.field(f'spec.{list_name}[{i}].volumeMounts[{k}].mountPath')} (container "
                                    f"{name!r}): {mount_path[:80]!r} would cover the quota file, ledger or "
                                    "/etc/ld.so.preload that the HCS node agent mounts there; mount the volume "
                                    "elsewhere")
            if sc.get("allowPrivilegeEscalation") is True:
                problems.append(f"{base}.allowPrivilegeEscalation (container {name!r}): true lets setuid programs "
                                "gain capabilities that bypass the in-container quota; set it to false or remove it")
    if not problems:
        return Verdict()
    if cfg.deny_privileged_with_quota:
        return Verdict(tuple(p + " (pods with HCS quotas may not; only an administrator can allow it, with "
                             "webhook.denyPrivilegedWithQuota=false)" for p in problems))
    return Verdict(warnings=tuple(p + " (admitted: webhook.denyPrivilegedWithQuota=false)" for p in problems))


# --- the hcs.io/assignment record: only the allocator (and node agents, for their node) write it ------

RECORD_ANNOTATIONS = ("hcs.io/assignment", "hcs.io/assignment-signature")
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def _record(meta: object) -> tuple[object, ...]:
    ann = as_dict(as_dict(meta).get("annotations"))
    return tuple(ann.get(k) for k in RECORD_ANNOTATIONS)


def check_record_write(request: Mapping[str, object], cfg: WebhookConfig) -> Verdict:
    """Deny a pod CREATE carrying ``hcs.io/assignment`` (or its signature) and a pod UPDATE changing or
    removing them, unless the API server authenticated the request as the allocator
    (``assignmentWriters``) or as a node agent writing a pod bound to its own node
    (``nodeAssignmentWriters``, node from the token's node-name claim). The same rule as the chart's
    ValidatingAdmissionPolicy, for clusters without it."""
    operation = request.get("operation")
    obj = as_dict(request.get("object"))
    new = _record(obj.get("metadata"))
    if operation == "CREATE":
        if not any(v is not None for v in new):
            return Verdict()
    elif operation == "UPDATE":
        if new == _record(as_dict(request.get("oldObject")).get("metadata")):
            return Verdict()
    else:
        return Verdict()
    user = as_dict(request.get("userInfo"))
    username = str(user.get("username", ""))
    if username and username in cfg.assignment_writers:
        return Verdict()
    if username and username in cfg.node_assignment_writers:
        token_node = next(iter(as_list(as_dict(user.get("extra")).get(NODE_NAME_EXTRA))), "")
        pod_node = as_dict(obj.get("spec")).get("nodeName") or ""
        if token_node and token_node == pod_node:
            return Verdict()
        return Verdict((f"metadata.annotations[{RECORD_ANNOTATIONS[0]}]: the HCS node agent on node "
                        f"{token_node or '(unknown)'} may only write it on pods bound to that node, not on a pod "
                        f"bound to {pod_node or 'no node'}",))
    verb = "set" if operation == "CREATE" else "changed"
    return Verdict((f"metadata.annotations[{RECORD_ANNOTATIONS[0]}]: {verb} by {username[:120] or 'an unknown user'}; "
                    "only the HCS allocator records which devices a pod holds; remove the hcs.io/assignment "
                    "annotations from your change",))


def check_template_record(t: PodTemplate) -> Verdict:
    """A workload's pod template must not carry the record (its pods would copy a forged one)."""
    ann = as_dict(t.metadata.get("annotations"))
    found = [k for k in RECORD_ANNOTATIONS if k in ann]
    if not found:
        return Verdict()
    return Verdict(tuple(f"{t.field(f'metadata.annotations[{k}]')}: only the HCS allocator writes it; remove it "
                         "from the pod template" for k in found))


def allowed_vendors(annotations: Mapping[str, str]) -> tuple[str, ...] | None:
    """The vendors ``hcs.io/vendor`` lets the pod run on (in :class:`Vendor` order); None: no restriction.

    ``"nvidia,ascend"`` allows those two, ``"!hygon"`` every vendor but Hygon. A selector that allows
    every vendor is no restriction. (Unknown names are denied by :func:`check_annotations`.)
    """
    raw = annotations.get(ANN_VENDOR)
    if raw is None:
        return None
    include, exclude = split_selector(raw)
    every = [v.value for v in Vendor]
    allowed = tuple(v for v in every if (not include or v in include) and v not in exclude)
    return None if len(allowed) == len(every) else allowed


def _either(names: Iterable[str]) -> str:
    """``ascend`` / ``ascend or hygon`` / ``nvidia, ascend or hygon``."""
    items = list(names)
    return " or ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} or {items[-1]}"


def check_island(
    amounts: list[Amounts], capacity: IslandCapacity | None, cfg: WebhookConfig, t: PodTemplate
) -> Verdict:
    """With ``hcs.io/topology-preference: high-bandwidth``, each container's VRAM must fit the largest
    interconnect island it may run on (without it the allocator spreads devices across islands).

    With ``hcs.io/vendor`` (and a source that knows vendors) that is the largest island among the
    allowed vendors; a configured ``largestIsland`` knows no vendors, so it is the one number.
    """
    wanted = [a for a in amounts if a.vram_bytes is not None]
    if not wanted or t.annotations.get(ANN_TOPOLOGY, "").strip().lower() != HIGH_BANDWIDTH:
        # Only high-bandwidth keeps a container's devices in one island; otherwise the allocator (and the
        # DRA claim) spreads them across a node's islands, so the island size is no limit to check.
        return Verdict()
    if capacity is None:
        return Verdict(warnings=("accelerator inventory not configured: VRAM was not checked against the "
                                 "largest interconnect island",))
    try:
        islands = capacity.islands()
    except CapacityUnavailable as exc:
        text = f"cannot check VRAM against the largest interconnect island: {exc}"
        if cfg.allocator_failure is FailurePolicy.CLOSED:
            return Verdict(denials=(text + "; retry when the HCS allocator is reachable",))
        return Verdict(warnings=(text + "; admitted without the check (webhook.allocatorFailurePolicy=open)",))
    overall = islands.largest
    if overall is None:
        if islands.devices:
            return Verdict(warnings=(f"none of the {islands.devices} accelerators registered in the cluster is "
                                     "healthy: VRAM was not checked; the pod stays Pending until one is",))
        return Verdict(warnings=("no accelerators are registered in the cluster yet: VRAM was not checked",))
    vendors = allowed_vendors(t.annotations) if islands.knows_vendors else None
    selector = t.field(f"metadata.annotations[{ANN_VENDOR}]")
    island = islands.largest_among(vendors)
    if island is None:
        assert vendors is not None
        return Verdict(warnings=(
            f"{selector}: no healthy {_either(vendors) or 'allowed'} accelerator is registered in the cluster "
            f"yet: VRAM was not checked; the pod stays Pending until one is",))
    scope = "interconnect island" if vendors is None else f"{_either(vendors)} interconnect island"
    denials = []
    for a in wanted:
        assert a.vram_bytes is not None
        if a.vram_bytes <= island.vram_bytes:
            continue
        text = (f"{a.container.where}: {VRAM} {format_bytes(a.vram_bytes)} is larger than the largest {scope} "
                f"in the cluster ({island.describe()}); no node can ever run it")
        if vendors is not None:
            text += f" with {selector}={t.annotations[ANN_VENDOR]!r}"
        if vendors is not None and a.vram_bytes <= overall.vram_bytes:  # another vendor's island holds it
            text += (f". Ask for less VRAM per container, split the work across pods, or allow {overall.vendor} "
                     f"in {selector}: its largest island holds {format_bytes(overall.vram_bytes)} "
                     f"({overall.where()})")
        else:
            text += ". Ask for less VRAM per container or split the work across pods"
        denials.append(text)
    return Verdict(tuple(denials))


def validate_template(
    t: PodTemplate, cfg: WebhookConfig, capacity: IslandCapacity | None
) -> tuple[list[Amounts], Verdict]:
    """Everything the validating webhook checks for one pod template."""
    amounts, verdict = template_amounts(t, cfg)
    if not amounts and verdict.allowed:
        if is_quota_pod(t):  # translated for DRA: no ai.compute left, but held to a quota all the same
            return amounts, check_quota_escapes(t, cfg)
        return amounts, verdict  # not an accelerator pod: not ours
    verdict = verdict.merge(Verdict(tuple(check_annotations(t, cfg))))
    verdict = verdict.merge(check_quota_escapes(t, cfg))
    if verdict.allowed:
        verdict = verdict.merge(check_island(amounts, capacity, cfg, t))
    return amounts, verdict
