"""Client of the kubelet's pod-resources API (which pod/container holds which device IDs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from hcs.api.gen.podresources.v1 import api_pb2 as pr
from hcs.api.gen.podresources.v1 import api_pb2_grpc as pr_grpc

log = logging.getLogger(__name__)

#: The kubelet's own default is 4 MiB; large nodes answer more (dcgm-exporter uses 16 MiB too).
MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Holder:
    namespace: str
    pod: str
    container: str
    device_ids: tuple[str, ...]


class PodResourcesError(Exception):
    """The kubelet's pod-resources socket did not answer."""


class PodResourcesClient:
    def __init__(self, socket_path: str, timeout_s: float = 2.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            f"unix://{socket_path}",
            options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                     ("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 1000)],
        )
        self._stub = pr_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]

    def holders(self, resource_name: str) -> list[Holder]:
        """Every container holding device IDs of ``resource_name``. Raises PodResourcesError."""
        return self.snapshot(resource_name)[1]

    def snapshot(self, resource_name: str) -> tuple[set[tuple[str, str]], list[Holder]]:
        """The kubelet's active pods as (namespace, name) — a pod being admitted is among them — and
        every container holding device IDs of ``resource_name``, from one List. Raises PodResourcesError."""
        try:
            resp = self._stub.List(pr.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise PodResourcesError(
                f"kubelet pod-resources at {self.socket_path}: {exc.code().name}: {exc.details()}"
            ) from exc
        out: list[Holder] = []
        pods: set[tuple[str, str]] = set()
        for pod in resp.pod_resources:
            pods.add((pod.namespace, pod.name))
            for c in pod.containers:
                ids = tuple(i for d in c.devices if d.resource_name == resource_name for i in d.device_ids)
                if ids:
                    out.append(Holder(pod.namespace, pod.name, c.name, ids))
        return pods, out

    def close(self) -> None:
        self._channel.close()
