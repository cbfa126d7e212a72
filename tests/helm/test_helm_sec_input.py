"""Chart side of issue 16 (helper sec-input): the extender's mTLS material and the templates webhook's
matchConditions. The generated certificates are checked with real TLS: the allocator's serving pair
accepts the scheduler's client certificate and the extender refuses a caller without it."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from helm_chart import component_configs, container, one
from helm_chart_fixtures import Render

from hcs.allocator.extender import Extender, extender_tls_from_config, serve_http
from hcs.allocator.state import AllocatorState
from hcs.webhook.manifests import TEMPLATE_ASKS_ACCELERATOR


def _mounts(c: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}


def test_extender_serves_https_and_the_scheduler_presents_its_certificate(rendered: Render, tmp_path: Path) -> None:
    docs = rendered()
    configs = component_configs(docs)
    tls = configs["allocator"]["allocator"]["extender"]["tls"]
    assert tls["allowedSubjects"] == ["hcs-scheduler"]
    (ext,) = configs["kube-scheduler"]["extenders"]
    assert ext["urlPrefix"].startswith("https://") and ext["enableHTTPS"] is True
    deploy = one(docs, "Deployment", "hcs-allocator")
    alloc, sched = container(deploy, "allocator"), container(deploy, "kube-scheduler")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    secret = one(docs, "Secret", "hcs-allocator-extender-tls")

    def files(c: dict[str, Any], paths: list[str]) -> list[Path]:
        """Where each configured path lands: the mounted Secret item, written out under tmp_path."""
        out = []
        for path in paths:
            vol = max((n for n, mp in _mounts(c).items() if path.startswith(mp + "/")),
                      key=lambda n: len(_mounts(c)[n]))
            rel = path[len(_mounts(c)[vol]) + 1:]
            item = next(i for i in volumes[vol]["secret"]["items"] if i["path"] == rel)
            assert volumes[vol]["secret"]["secretName"] == secret["metadata"]["name"]
            local = tmp_path / vol / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(base64.b64decode(secret["data"][item["key"]]))
            out.append(local)
        return out

    cert, key, ca = files(alloc, [tls["certFile"], tls["keyFile"], tls["clientCAFile"]])
    ccert, ckey, cca = files(sched, [ext["tlsConfig"]["certFile"], ext["tlsConfig"]["keyFile"],
                                     ext["tlsConfig"]["caFile"]])
    assert alloc["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # the rendered material works: a real extender with the allocator's config, called as the scheduler
    cfg = {"tls": {**tls, "certFile": str(cert), "keyFile": str(key), "clientCAFile": str(ca)}}
    server = serve_http(Extender(AllocatorState()), "127.0.0.1", 0,
                        tls=extender_tls_from_config(cfg, insecure_dev=False))
    try:
        ctx = ssl.create_default_context(cafile=str(cca))
        ctx.check_hostname = False  # the serving name is the Service's DNS name, not 127.0.0.1
        ctx.load_cert_chain(str(ccert), str(ckey))
        body = json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["n"]}).encode()
        req = urllib.request.Request(f"https://127.0.0.1:{server.port}/scheduler/filter", data=body)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert json.loads(resp.read())["NodeNames"] == ["n"]
        anonymous = ssl.create_default_context(cafile=str(cca))
        anonymous.check_hostname = False
        try:
            urllib.request.urlopen(req, context=anonymous, timeout=10)
            raise AssertionError("an unauthenticated caller got an answer")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    finally:
        server.shutdown()


def test_templates_webhook_only_sees_workloads_that_ask_for_ai_compute(rendered: Render) -> None:
    docs = rendered()
    mutating = one(docs, "MutatingWebhookConfiguration")
    hook = next(w for w in mutating["webhooks"] if w["name"] == "templates.webhook.ai.compute")
    assert hook["matchConditions"] == [{"name": "template-asks-ai-compute", "expression": TEMPLATE_ASKS_ACCELERATOR}]


def test_cert_manager_issues_the_extender_pairs_from_its_own_ca(rendered: Render) -> None:
    docs = rendered(api_versions=("cert-manager.io/v1",))
    server = one(docs, "Certificate", "hcs-allocator-extender")
    client = one(docs, "Certificate", "hcs-allocator-scheduler-client")
    assert server["spec"]["issuerRef"]["name"] == client["spec"]["issuerRef"]["name"] == "hcs-allocator-extender-ca"
    assert client["spec"]["commonName"] == "hcs-scheduler" and "client auth" in client["spec"]["usages"]
    assert "server auth" in server["spec"]["usages"]
    deploy = one(docs, "Deployment", "hcs-allocator")
    volumes = {v["name"]: v["secret"] for v in deploy["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert volumes["extender-tls"]["secretName"] == server["spec"]["secretName"]
    assert volumes["extender-client"]["secretName"] == client["spec"]["secretName"]
    assert {i["path"] for i in volumes["extender-client"]["items"]} == {"ca.crt", "client.crt", "client.key"}
