"""Mutation of pods asking for ``ai.compute/*``: pure functions from a pod to a JSON patch.

Device-plugin mode: ``schedulerName`` (when unset), the slot resource the node agent advertises,
quantities normalised (canonical form, limits = requests as extended resources require), and the
original request recorded in ``hcs.io/original-request``.

DRA mode: each accelerator container gets its own ResourceClaim through ``pod.spec.resourceClaims``
pointing at a generated ResourceClaimTemplate (content-addressed name, so identical requests share
one template) against DeviceClass ``vram.ai.compute`` with capacity requests; a request that may need
several devices lists ``firstAvailable`` alternatives (1 device, then 2, 4, 8 sharing the VRAM), with
a ``matchAttribute`` island constraint for ``hcs.io/topology-preference: high-bandwidth``.

Image retargeting: a container whose image is in the image map gets its per-vendor images recorded
in ``hcs.io/vendor-images``; with exactly one vendor allowed by ``hcs.io/vendor`` the image is set
right away, otherwise (device-plugin mode) the pod gets the ``hcs.io/vendor-image`` scheduling gate
and the allocator calls :func:`hcs.retarget.retarget_patch` once it has chosen the vendor.

All mutations are idempotent: running them on their own output changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hcs.devices.catalog import default_catalog
from hcs.devices.model import Vendor
from hcs.podspec import CONTAINER_LISTS, RESOURCE_DOMAIN, PodTemplate, as_dict, as_list, split_selector
from hcs.quantity import format_bytes
from hcs.retarget import ANN_IMAGE_MAP, VENDOR_IMAGE_GATE, apply_images
from hcs.webhook.config import (
    ANN_MODEL,
    ANN_ORIGINAL,
    ANN_TOPOLOGY,
    ANN_VENDOR,
    HIGH_BANDWIDTH,
    TFLOPS,
    VRAM,
    DraSettings,
    Mode,
    WebhookConfig,
)
from hcs.webhook.validate import Amounts

#: image → vendor → image
ImageMap = Mapping[str, Mapping[str, str]]

MANAGED_BY = {"app.kubernetes.io/managed-by": "hcs-webhook"}
#: DRA mode: label selecting the pods whose ResourceClaimTemplates :mod:`hcs.webhook.claims` creates, and
#: annotation recording each template's inputs ({template name: {"vram": bytes, "tflops": n}}).
CLAIM_TEMPLATES = "hcs.io/claim-templates"
REQUEST_NAME = "accel"
DEFAULT_SCHEDULER = "default-scheduler"


@dataclass(frozen=True)
class Mutation:
    patch: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    #: ResourceClaimTemplates (dicts, resource.k8s.io/v1) the patched pod refers to. The webhook does not
    #: create them (admission has no side effects): :mod:`hcs.webhook.claims` does, from the admitted pod.
    templates: tuple[dict[str, Any], ...] = ()


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    """Deep copy of decoded JSON (the C JSON codec is several times faster than copy.deepcopy)."""
    out: dict[str, Any] = json.loads(json.dumps(value))
    return out


def _dns_name(prefix: str, name: str) -> str:
    candidate = f"{prefix}{name}".lower()
    if len(candidate) <= 63:
        return candidate
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{prefix}{name[: 63 - len(prefix) - 11]}-{digest}".lower()


def _original(amounts: list[Amounts]) -> str:
    record = {
        a.container.name: {
            k: v for k, v in (("requests", a.container.requests), ("limits", a.container.limits)) if v
        }
        for a in amounts
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _cel_attr(attribute: str, default_domain: str) -> str:
    domain, _, name = attribute.rpartition("/")
    domain = domain or default_domain
    access = f".{name}" if name.isidentifier() else f"[{json.dumps(name)}]"
    return f"device.attributes[{json.dumps(domain)}]{access}"


def model_ids(names: tuple[str, ...]) -> list[str]:
    """Expand exchange-rate keys (``a100``) to catalog model ids (``a100-40g``, ``a100-80g``)."""
    models = default_catalog().models
    out: set[str] = set()
    for n in names:
        matched = {m.id for m in models if m.id.lower() == n or m.rate_key.lower() == n}
        out |= matched or {n}
    return sorted(out)


def cel_selectors(annotations: Mapping[str, str], dra: DraSettings) -> list[dict[str, Any]]:
    """``hcs.io/vendor`` / ``hcs.io/model`` include/exclude lists as CEL device selectors."""
    exprs = []
    for ann, attr, expand in ((ANN_VENDOR, dra.vendor_attribute, False), (ANN_MODEL, dra.model_attribute, True)):
        if ann not in annotations:
            continue
        include, exclude = split_selector(annotations[ann])
        ref = _cel_attr(attr, dra.driver)
        if include:
            values = model_ids(include) if expand else sorted(include)
            exprs.append(f"{ref} in {json.dumps(values)}")
        if exclude:
            values = model_ids(exclude) if expand else sorted(exclude)
            exprs.append(f"!({ref} in {json.dumps(values)})")
    return [{"cel": {"expression": e}} for e in exprs]


def claim_template_spec(
    vram_bytes: int | None, tflops: int | None, annotations: Mapping[str, str], dra: DraSettings
) -> dict[str, Any]:
    """The ResourceClaimTemplate ``spec`` for one container's request."""
    selectors = cel_selectors(annotations, dra)

    def sub(count: int) -> dict[str, Any]:
        capacity: dict[str, str] = {}
        if vram_bytes is not None:
            per = math.ceil(vram_bytes / count / dra.step_bytes) * dra.step_bytes
            capacity[dra.memory_capacity] = format_bytes(per)
        if tflops is not None:
            capacity[dra.tflops_capacity] = str(math.ceil(tflops / count))
        body: dict[str, Any] = {"deviceClassName": dra.device_class, "allocationMode": "ExactCount", "count": count}
        if selectors:
            body["selectors"] = selectors
        if capacity:
            body["capacity"] = {"requests": capacity}
        return body

    counts = [1]
    if vram_bytes is not None:
        counts = [n for n in dra.device_counts if n == 1 or vram_bytes / n >= dra.min_split_bytes]
    request: dict[str, Any] = {"name": REQUEST_NAME}
    if len(counts) == 1 and counts[0] == 1:
        request["exactly"] = sub(1)
    else:
        request["firstAvailable"] = [{"name": f"x{n}", **sub(n)} for n in counts]
    devices: dict[str, Any] = {"requests": [request]}
    multi = any(n > 1 for n in counts)
    if multi and annotations.get(ANN_TOPOLOGY, "").strip().lower() == HIGH_BANDWIDTH:
        devices["constraints"] = [{"requests": [REQUEST_NAME], "matchAttribute": dra.island_attribute}]
    return {"spec": {"devices": devices}}


def claim_template(
    namespace: str, vram_bytes: int | None, tflops: int | None, annotations: Mapping[str, str], dra: DraSettings
) -> dict[str, Any]:
    spec = claim_template_spec(vram_bytes, tflops, annotations, dra)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    shown = {"vram": format_bytes(vram_bytes) if vram_bytes is not None else None, "tflops-fp16": tflops}
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": f"hcs-{digest}",
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {"hcs.io/request": json.dumps({k: v for k, v in shown.items() if v is not None})},
        },
        "spec": spec,
    }


def single_vendor(annotations: Mapping[str, str]) -> str | None:
    """The vendor when ``hcs.io/vendor`` allows exactly one, else None."""
    if ANN_VENDOR not in annotations:
        return None
    include, exclude = split_selector(annotations[ANN_VENDOR])
    allowed = set(include) if include else {v.value for v in Vendor}
    allowed -= set(exclude)
    return next(iter(allowed)) if len(allowed) == 1 else None


def _patch_ops(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON-patch ``add`` ops for the subtrees the webhook touches (``add`` replaces object members)."""
    ops: list[dict[str, Any]] = []
    old_meta, new_meta = as_dict(old.get("metadata")), as_dict(new.get("metadata"))
    for key in ("annotations", "labels"):
        if key in new_meta and old_meta.get(key) != new_meta.get(key):
            if "metadata" not in old and not ops:
                ops.append({"op": "add", "path": "/metadata", "value": {}})
            ops.append({"op": "add", "path": f"/metadata/{key}", "value": new_meta[key]})
    old_spec, new_spec = as_dict(old.get("spec")), as_dict(new.get("spec"))
    for key in ("schedulerName", "schedulingGates", "resourceClaims"):
        if old_spec.get(key) != new_spec.get(key):
            ops.append({"op": "add", "path": f"/spec/{key}", "value": new_spec[key]})
    for list_name in CONTAINER_LISTS:
        for i, (a, b) in enumerate(zip(as_list(old_spec.get(list_name)), as_list(new_spec.get(list_name)),
                                       strict=False)):
            for key in ("resources", "image"):
                if as_dict(a).get(key) != as_dict(b).get(key):
                    ops.append({"op": "add", "path": f"/spec/{list_name}/{i}/{key}", "value": b[key]})
    return ops


def _image_retarget(
    spec: dict[str, Any], annotations: dict[str, str], image_map: ImageMap, mode: Mode
) -> list[str]:
    """Record per-vendor images; set them now (one vendor allowed) or gate the pod. Returns warnings."""
    if not image_map or ANN_IMAGE_MAP in annotations:
        return []
    per_container: dict[str, dict[str, str]] = {}
    for list_name in CONTAINER_LISTS:
        for c in as_list(spec.get(list_name)):
            c = as_dict(c)
            image = c.get("image")
            if isinstance(image, str) and image in image_map and isinstance(c.get("name"), str):
                per_container[c["name"]] = dict(image_map[image])
    if not per_container:
        return []
    annotations[ANN_IMAGE_MAP] = json.dumps(per_container, sort_keys=True, separators=(",", ":"))
    vendor = single_vendor(annotations)
    if vendor is not None:
        apply_images(spec, per_container, vendor)
        return []
    if mode is Mode.DRA:
        return ["image retargeting in DRA mode needs hcs.io/vendor naming one vendor (the vendor is chosen "
                "by kube-scheduler after admission); images left unchanged"]
    gates = as_list(spec.get("schedulingGates"))
    if not any(as_dict(g).get("name") == VENDOR_IMAGE_GATE for g in gates):
        spec["schedulingGates"] = [*gates, {"name": VENDOR_IMAGE_GATE}]
    return []


def _normalised(a: Amounts) -> dict[str, str]:
    """A container's ``ai.compute`` amounts as the webhook writes them back (VRAM in binary units)."""
    values: dict[str, str] = {}
    if a.vram_bytes is not None:
        values[VRAM] = format_bytes(a.vram_bytes)
    if a.tflops is not None:
        values[TFLOPS] = str(a.tflops)
    return values


def mutate_pod(
    pod: dict[str, Any],
    template: PodTemplate,
    amounts: list[Amounts],
    namespace: str,
    mode: Mode,
    cfg: WebhookConfig,
    image_map: ImageMap | None = None,
) -> Mutation:
    """The patch (and claim templates) for one pod being created."""
    if not amounts:
        return Mutation()
    new = {"metadata": _copy(template.metadata), "spec": _copy(template.spec)}
    meta, spec = new["metadata"], new["spec"]
    annotations: dict[str, str] = dict(as_dict(meta.get("annotations")))
    warnings: list[str] = [n for a in amounts for n in a.notes]
    templates: list[dict[str, Any]] = []
    if ANN_ORIGINAL not in annotations:
        annotations[ANN_ORIGINAL] = _original(amounts)

    if mode is Mode.DEVICE_PLUGIN:
        # The API server defaults schedulerName before admission, so "default-scheduler" means unset.
        if spec.get("schedulerName") in (None, "", DEFAULT_SCHEDULER):
            spec["schedulerName"] = cfg.scheduler_name
        for a in amounts:
            values = {**_normalised(a), cfg.slot_resource: "1"}
            res = _container_resources(spec, a)
            for section in ("requests", "limits"):
                res[section] = {**as_dict(res.get(section)), **values}
    else:
        claims = as_list(spec.get("resourceClaims"))
        inputs: dict[str, dict[str, int | None]] = {}
        for a in amounts:
            claim_name = _dns_name("hcs-", a.container.name)
            tpl = claim_template(namespace, a.vram_bytes, a.tflops, annotations, cfg.dra)
            templates.append(tpl)
            inputs[tpl["metadata"]["name"]] = {"vram": a.vram_bytes, "tflops": a.tflops}
            claims = [c for c in claims if as_dict(c).get("name") != claim_name]
            claims.append({"name": claim_name, "resourceClaimTemplateName": tpl["metadata"]["name"]})
            res = _container_resources(spec, a)
            for section in ("requests", "limits"):
                kept = {k: v for k, v in as_dict(res.get(section)).items()
                        if not str(k).startswith(RESOURCE_DOMAIN + "/")}
                if kept:
                    res[section] = kept
                else:
                    res.pop(section, None)
            own = [c for c in as_list(res.get("claims")) if as_dict(c).get("name") != claim_name]
            res["claims"] = [*own, {"name": claim_name}]
        spec["resourceClaims"] = claims
        annotations[CLAIM_TEMPLATES] = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
        meta["labels"] = {**{str(k): v for k, v in as_dict(meta.get("labels")).items()}, CLAIM_TEMPLATES: "true"}

    warnings += _image_retarget(spec, annotations, image_map or {}, mode)
    meta["annotations"] = annotations
    if any(as_dict(g).get("name") == VENDOR_IMAGE_GATE for g in as_list(spec.get("schedulingGates"))):
        # the allocator watches only pods labelled hcs.io/allocator; it places gated pods and ungates them
        meta["labels"] = {**as_dict(meta.get("labels")), "hcs.io/allocator": "gated"}
    old: dict[str, Any] = {"spec": template.spec}
    if isinstance(pod.get("metadata"), dict):
        old["metadata"] = template.metadata
    return Mutation(tuple(_patch_ops(old, new)), tuple(warnings), tuple(templates))


def normalise_template(template: PodTemplate, amounts: list[Amounts]) -> Mutation:
    """Patch for a workload's pod template: canonical ``ai.compute`` quantities with limits = requests.

    The API server insists on limits equal to requests for extended resources in pod templates too,
    before any validating webhook runs; without this, ``requests: {ai.compute/vram: 16Gi}`` in a
    Deployment is rejected. Everything else (slot, scheduler, claims) happens when its pods are created.
    """
    prefix = "/" + template.path.replace(".", "/")
    ops: list[dict[str, Any]] = []
    for a in amounts:
        values = _normalised(a)
        res = _copy(as_dict(a.container.body.get("resources")))
        for section in ("requests", "limits"):
            res[section] = {**as_dict(res.get(section)), **values}
        if res != a.container.body.get("resources"):
            ops.append({"op": "add", "path": f"{prefix}/spec/{a.container.list_name}/{a.container.index}/resources",
                        "value": res})
    return Mutation(tuple(ops), tuple(n for a in amounts for n in a.notes))


def _container_resources(spec: dict[str, Any], a: Amounts) -> dict[str, Any]:
    body = spec[a.container.list_name][a.container.index]
    res = as_dict(body.get("resources"))
    body["resources"] = res
    return res
