"""Find the pod spec(s) in an admitted object and read their ``ai.compute/*`` requests.

Objects arrive as decoded JSON (dicts); nothing here trusts their shape: a field of the wrong type
reads as absent, so malformed objects get a clear denial later instead of an exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: the extended resources HCS serves are named ``ai.compute/<name>``
RESOURCE_DOMAIN = "ai.compute"

#: kind → path (list of keys) from the object to its pod template (``metadata`` + ``spec``).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "PodTemplate": ("template",),
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

CONTAINER_LISTS = ("initContainers", "containers")


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class PodTemplate:
    """A pod (or a workload's pod template): where it sits in the object and its parts."""

    path: str  # human path of the template, "" for a Pod, "spec.template" for a Deployment
    metadata: dict[str, Any]
    spec: dict[str, Any]

    def field(self, rest: str) -> str:
        return f"{self.path}.{rest}" if self.path else rest

    @property
    def annotations(self) -> dict[str, str]:
        raw = as_dict(self.metadata.get("annotations"))
        return {str(k): v for k, v in raw.items() if isinstance(v, str)}


@dataclass(frozen=True)
class ContainerRef:
    """One container of a pod template with its ``ai.compute/*`` requests and limits (raw values)."""

    list_name: str  # "containers" | "initContainers"
    index: int
    name: str
    body: dict[str, Any]
    requests: dict[str, Any]
    limits: dict[str, Any]

    @property
    def where(self) -> str:
        return f"spec.{self.list_name}[{self.index}] (container {self.name!r})"

    @property
    def asks_accelerator(self) -> bool:
        return bool(self.requests or self.limits)


def pod_template(obj: Mapping[str, Any], kind: str) -> PodTemplate | None:
    """The pod template of a supported kind, else None (unknown kinds are not ours to judge)."""
    path = TEMPLATE_PATHS.get(kind)
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = as_dict(node).get(key)
    node = as_dict(node)
    return PodTemplate(".".join(path), as_dict(node.get("metadata")), as_dict(node.get("spec")))


def _ours(resources: Any) -> dict[str, Any]:
    return {str(k): v for k, v in as_dict(resources).items() if str(k).startswith(RESOURCE_DOMAIN + "/")}


def containers(spec: Mapping[str, Any]) -> Iterator[ContainerRef]:
    """Every container (init first) with its ``ai.compute/*`` requests and limits."""
    for list_name in CONTAINER_LISTS:
        for index, raw in enumerate(as_list(spec.get(list_name))):
            body = as_dict(raw)
            resources = as_dict(body.get("resources"))
            name = body.get("name")
            yield ContainerRef(
                list_name=list_name,
                index=index,
                name=name if isinstance(name, str) else f"#{index}",
                body=body,
                requests=_ours(resources.get("requests")),
                limits=_ours(resources.get("limits")),
            )


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests deeper than ``limit`` (iterative: safe on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def split_selector(value: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"nvidia,ascend,!910a"`` → (include, exclude), lower-cased, blanks dropped."""
    include: list[str] = []
    exclude: list[str] = []
    for part in value.split(","):
        item = part.strip().lower()
        if not item:
            continue
        if item.startswith("!"):
            if item[1:].strip():
                exclude.append(item[1:].strip())
        else:
            include.append(item)
    return tuple(include), tuple(exclude)


def created_ms(value: Any) -> int:
    """A creationTimestamp (RFC 3339 text, or a datetime from the typed client) in Unix milliseconds;
    0 when absent or unreadable."""
    if not value:
        return 0
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0
