"""API-server failures seen through a real kubernetes ApiClient pointed at a closed port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from webhook_helpers import ServerFactory, pod, review

from hcs.webhook.capacity import CapacityUnavailable, ComputeNodeCapacity
from hcs.webhook.config import Mode, WebhookConfig
from hcs.webhook.kube import ClusterView


@pytest.fixture
def dead_api() -> Iterator[Any]:
    from kubernetes import client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends: connection refused
    conf = client.Configuration()
    conf.host = f"https://127.0.0.1:{port}"
    conf.verify_ssl = False
    conf.retries = 0
    api = client.ApiClient(conf)
    yield api
    api.close()


def test_lookups_fall_back_when_the_api_is_down(dead_api: Any) -> None:
    view = ClusterView(WebhookConfig(mode=Mode.DRA, image_map="hcs/images"), dead_api)
    assert view.namespace_mode("team-a") is Mode.DRA
    assert view.image_map() == {}
    with pytest.raises(CapacityUnavailable, match="listing ComputeNodes failed"):
        ComputeNodeCapacity(dead_api).islands()


def test_dra_mutation_creates_nothing_so_a_down_api_does_not_matter(serve: ServerFactory, dead_api: Any) -> None:
    """Admission has no side effects: the templates come from the admitted pod (hcs.webhook.claims)."""
    _, client = serve(WebhookConfig(mode=Mode.DRA), api_client=dead_api)
    resp = client.admit("mutate", review(pod({"ai.compute/vram": "16Gi"}), namespace="team-a"))
    assert resp["allowed"] is True and resp.get("patchType") == "JSONPatch"
