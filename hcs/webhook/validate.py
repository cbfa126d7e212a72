"""Validation of ``ai.compute/*`` requests: pure functions from a pod template to a verdict.

Each denial says what is wrong, where (container / annotation) and how to fix it. The island-size
check asks a :class:`~hcs.webhook.capacity.IslandCapacity` for the cluster's islands and compares each
container's VRAM with the largest island among the vendors ``hcs.io/vendor`` allows (all when unset);
the denial names that island's node. When the source is unreachable the configured failure policy
decides (admit with a warning, or deny).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache

from hcs.devices.model import Vendor
from hcs.errors import QuantityError
from hcs.quantity import format_bytes, parse_quantity
from hcs.webhook.capacity import CapacityUnavailable, IslandCapacity
from hcs.webhook.config import (
    ANN_MODEL,
    ANN_POLICY,
    ANN_TOPOLOGY,
    ANN_VENDOR,
    HIGH_BANDWIDTH,
    TFLOPS,
    VRAM,
    FailurePolicy,
    WebhookConfig,
)
from hcs.webhook.podspec import ContainerRef, PodTemplate, as_dict, containers, split_selector

TOPOLOGY_VALUES = (HIGH_BANDWIDTH, "none")
POLICY_VALUES = ("binpack", "spread")


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
    try:
        from hcs.devices.catalog import default_catalog
    except ImportError:  # catalog not built: model names cannot be checked
        return frozenset()
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
    return errors


def _privileged(c: ContainerRef) -> bool:
    sc = as_dict(c.body.get("securityContext"))
    caps = as_dict(sc.get("capabilities"))
    added = {str(x).upper() for x in caps.get("add", []) if isinstance(x, str)} if isinstance(
        caps.get("add"), list) else set()
    return sc.get("privileged") is True or "SYS_ADMIN" in added or "ALL" in added


def check_privileged(amounts: list[Amounts], cfg: WebhookConfig) -> Verdict:
    denials: list[str] = []
    warnings: list[str] = []
    for a in amounts:
        if a.vram_bytes is None or not _privileged(a.container):
            continue
        text = (f"{a.container.where}: privileged (or CAP_SYS_ADMIN) together with a {VRAM} quota: a "
                "privileged container can bypass the in-container quota and take a whole device")
        if cfg.deny_privileged_with_quota:
            denials.append(text + "; drop securityContext.privileged / SYS_ADMIN, or ask an administrator "
                           "to set webhook.denyPrivilegedWithQuota=false")
        else:
            warnings.append(text)
    return Verdict(tuple(denials), tuple(warnings))


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
        return amounts, verdict  # not an accelerator pod: not ours
    verdict = verdict.merge(Verdict(tuple(check_annotations(t, cfg))))
    verdict = verdict.merge(check_privileged(amounts, cfg))
    if verdict.allowed:
        verdict = verdict.merge(check_island(amounts, capacity, cfg, t))
    return amounts, verdict
