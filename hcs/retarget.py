"""Dynamic image retargeting, second half: once placement chose a vendor, set the vendor's images.

The webhook records per-container vendor images in the ``hcs.io/vendor-images`` annotation and holds
the pod with the ``hcs.io/vendor-image`` scheduling gate. The allocator, having chosen the vendor,
calls :func:`retarget_pod` (or builds the patch itself with :func:`retarget_patch`): container images
are patched (pod images are mutable) and the gate is removed, so the scheduler can place the pod.
Containers without an image for that vendor keep their image. Pods without the annotation are
untouched. ``hcs.io/retargeted-vendor`` records the decision.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from hcs.errors import HcsError
from hcs.podspec import CONTAINER_LISTS, as_dict, as_list

log = logging.getLogger(__name__)

#: per-container vendor images, written by the webhook (container → vendor → image)
ANN_IMAGE_MAP = "hcs.io/vendor-images"
#: the scheduling gate that holds a pod until the allocator chose its vendor
VENDOR_IMAGE_GATE = "hcs.io/vendor-image"
ANN_RETARGETED = "hcs.io/retargeted-vendor"


class RetargetError(HcsError):
    """The pod cannot be retargeted (bad annotation, API failure)."""


def vendor_images(pod: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The ``hcs.io/vendor-images`` annotation of a pod (container → vendor → image); {} when absent."""
    raw = as_dict(as_dict(pod.get("metadata")).get("annotations")).get(ANN_IMAGE_MAP)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise RetargetError(f"annotation {ANN_IMAGE_MAP}: not valid JSON ({exc}); delete and recreate the pod") from exc
    if not isinstance(data, dict):
        raise RetargetError(f"annotation {ANN_IMAGE_MAP}: expected an object container → vendor → image")
    return {
        str(c): {str(v): str(i) for v, i in m.items() if isinstance(i, str)}
        for c, m in data.items() if isinstance(m, dict)
    }


def apply_images(spec: dict[str, Any], per_container: Mapping[str, Mapping[str, str]], vendor: str) -> bool:
    """Set each mapped container's image for ``vendor`` in a pod spec dict (in place)."""
    changed = False
    for list_name in CONTAINER_LISTS:
        for c in as_list(spec.get(list_name)):
            c = as_dict(c)
            image = per_container.get(str(c.get("name")), {}).get(vendor)
            if image and c.get("image") != image:
                c["image"] = image
                changed = True
    return changed


def retarget_patch(pod: Mapping[str, Any], vendor: str) -> list[dict[str, Any]]:
    """JSON patch that sets the vendor's images and removes the gate; [] when nothing to do."""
    spec = as_dict(pod.get("spec"))
    meta = as_dict(pod.get("metadata"))
    per_container = vendor_images(pod)
    ops: list[dict[str, Any]] = []
    for list_name in CONTAINER_LISTS:
        for i, c in enumerate(as_list(spec.get(list_name))):
            c = as_dict(c)
            image = per_container.get(str(c.get("name")), {}).get(vendor)
            if image and c.get("image") != image:
                ops.append({"op": "replace", "path": f"/spec/{list_name}/{i}/image", "value": image})
    gates = as_list(spec.get("schedulingGates"))
    kept = [g for g in gates if as_dict(g).get("name") != VENDOR_IMAGE_GATE]
    if len(kept) != len(gates):
        ops.append({"op": "replace", "path": "/spec/schedulingGates", "value": kept})
    if ops or per_container:
        annotations = as_dict(meta.get("annotations"))
        if annotations.get(ANN_RETARGETED) != vendor:
            ops.append({"op": "add", "path": "/metadata/annotations/" + ANN_RETARGETED.replace("~", "~0")
                        .replace("/", "~1"), "value": vendor})
    if ops and meta.get("resourceVersion"):
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]})
    return ops


def retarget_pod(api_client: Any, namespace: str, name: str, vendor: str, *, attempts: int = 5) -> bool:
    """Patch pod ``namespace/name`` for ``vendor`` (retries on concurrent updates). True if patched."""
    # lazy: the kubernetes client is heavy; the webhook imports this module but never retargets
    from kubernetes.client.exceptions import ApiException

    client: Any = importlib.import_module("kubernetes.client")
    core = client.CoreV1Api(api_client)
    for _ in range(attempts):
        try:
            resp = core.read_namespaced_pod(name, namespace, _preload_content=False)
            pod = json.loads(resp.data)
        except ApiException as exc:
            raise RetargetError(f"pod {namespace}/{name}: cannot read it ({exc.status} {exc.reason})") from exc
        ops = retarget_patch(pod, vendor)
        if not ops:
            return False
        try:
            core.patch_namespaced_pod(name, namespace, ops, _content_type="application/json-patch+json")
        except ApiException as exc:
            # 409: conflict; 422 "the server rejected our request": our resourceVersion test failed because
            # the pod changed after we read it. Re-read and retry; a 422 on an unchanged pod is a real error.
            if exc.status == 409 or (exc.status == 422 and _changed(core, namespace, name, pod)):
                continue
            raise RetargetError(
                f"pod {namespace}/{name}: patching images for {vendor} failed ({exc.status} {exc.reason}: "
                f"{str(exc.body)[:300]})") from exc
        log.info("retargeted pod %s/%s to %s images", namespace, name, vendor)
        return True
    raise RetargetError(f"pod {namespace}/{name}: kept changing while retargeting; retry later")


def _changed(core: Any, namespace: str, name: str, seen: Mapping[str, Any]) -> bool:
    try:
        now = json.loads(core.read_namespaced_pod(name, namespace, _preload_content=False).data)
    except Exception:
        return False
    return bool(as_dict(now.get("metadata")).get("resourceVersion") != as_dict(seen.get("metadata")).get(
        "resourceVersion"))
