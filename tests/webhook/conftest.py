"""Fixtures for the webhook tests: real certificates (openssl), a real HTTPS server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webhook_helpers import Client, ComputeNodeApi, ServerFactory

from hcs.webhook.capacity import IslandCapacity
from hcs.webhook.certs import CertPaths, generate_certs
from hcs.webhook.config import WebhookConfig
from hcs.webhook.kube import ClusterView
from hcs.webhook.review import Admission
from hcs.webhook.server import WebhookServer


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_certs(tmp_path_factory.mktemp("webhook-certs"))


@pytest.fixture
def serve(certs: CertPaths) -> Iterator[ServerFactory]:
    started: list[tuple[WebhookServer, Client]] = []

    def start(
        cfg: WebhookConfig | None = None, capacity: IslandCapacity | None = None, api_client: Any = None,
        cert: Path | None = None, key: Path | None = None, cert_check_s: float = 5.0,
    ) -> tuple[WebhookServer, Client]:
        cfg = cfg or WebhookConfig()
        admission = Admission(cfg, capacity, ClusterView(cfg, api_client))
        server = WebhookServer("127.0.0.1", 0, str(cert or certs.cert), str(key or certs.key), admission,
                               cert_check_s=cert_check_s, max_body_bytes=cfg.max_body_bytes)
        server.start()
        client = Client(server.port, certs.ca)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        server.stop()


@pytest.fixture
def computenode_api() -> Iterator[ComputeNodeApi]:
    api = ComputeNodeApi()
    yield api
    api.close()
