"""Attack 2 (issue 16): forged ``hcs.io/assignment`` records.

Before: a tenant could write the record on its own pod, ``/validate`` allowed every pod UPDATE, the
node agent's local policy adopted the record as it was (even with an empty pod uid) and
``AllocatorState.restore`` kept conflicting reservations "anyway": a pod asking 1Gi got an 80Gi
quota on a device where another pod already held 60Gi.

Now: (a) the chart's ValidatingAdmissionPolicy (installed here into the real API server) and the
webhook's ``/validate`` deny anyone but the allocator (a node agent: only on its node's pods) writing
the record; (b) the record carries an HMAC bound to pod uid/namespace/name, node and every device and
byte count, so a record written around admission (here: by the cluster admin) is ignored by the
agent and by the allocator; (c) restore never over-commits: the earlier pod keeps its devices, the
later is reported (Event on the pod + metric) and loses.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sec_records_helpers import (
    GI,
    delete,
    ensure,
    find_helm,
    grant_in_namespace,
    impersonating,
    pod,
    render_chart,
    review,
    sa_user,
    taint_node,
    wait_for,
    webhook,
)

from hcs.allocator.placement import Grant, PodRef
from hcs.allocator.service import annotation_json
from hcs.allocator.state import AllocatorState, Reservation, RestoreConflict
from hcs.cluster_inventory import DeviceInfo, NodeInventory
from hcs.devices.model import Compute, Device, Vendor
from hcs.kube import KubeError, KubeRest
from hcs.node.assignments import Assignment, ContainerAssignment, DeviceGrant, LocalAssignmentSource, dumps
from hcs.records import REJECTED, PodIdentity, RecordError, RecordKey
from hcs.webhook.certs import CertPaths, generate_certs
from hcs.webhook.config import WebhookConfig

RUN = uuid.uuid4().hex[:6]
A100 = 312_000


def _registry() -> CollectorRegistry:
    r = CollectorRegistry()
    r.register(REJECTED)
    return r


def _rejected(reason: str, component: str) -> float:
    return _registry().get_sample_value("hcs_assignment_records_rejected_total",
                                        {"component": component, "reason": reason}) or 0.0


# --------------------------------------------------------------------------- (c) restore, no cluster

def _inv(node: str = "n1") -> NodeInventory:
    devs = tuple(DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, A100, "nvl0", 100)
                 for i in range(2))
    return NodeInventory(node, devs, 64_000, 512 * GI)


def _res(uid: str, created_ms: int, gib: int, device: int = 0, node: str = "n1", cpu: int = 1000) -> Reservation:
    g = Grant(f"nvidia-{device}", f"GPU-{device}", device, "nvidia", "a100-80g", "nvl0", gib * GI, 0)
    return Reservation(PodRef(uid, "team-a", f"pod-{uid}", created_ms), node, (("main", (g,)),), "confirmed",
                       created_ms, cpu, 2 * GI)


def test_restore_keeps_the_earlier_pod_and_reports_the_later() -> None:
    s = AllocatorState()
    s.set_node(_inv())
    lost: list[RestoreConflict] = []
    # the later pod comes first in the input: order must not matter
    problems = s.restore([_res("late", 2000, 60), _res("early", 1000, 60), _res("other", 3000, 10, device=1)],
                         on_conflict=lost.append)
    assert [c.loser.pod.uid for c in lost] == ["late"]
    assert [w.pod.uid for w in lost[0].winners] == ["early"]
    assert "pod team-a/pod-late" in problems[0] and "later pod loses" in problems[0]
    assert s.reservation("late") is None and s.reservation("early") is not None
    assert s.usage("n1") == {"nvidia-0": (60 * GI, 0), "nvidia-1": (10 * GI, 0)}
    s.check_invariants()
    # CPU/memory bookkeeping counts the kept pods only
    assert s._cpu_mem["n1"] == (2000, 4 * GI)
    for uid in ("early", "other"):
        s.release(uid)
    assert s.usage("n1") == {} and "n1" not in s._cpu_mem


def test_restore_evicts_a_held_later_reservation_for_an_earlier_record() -> None:
    """A split brain: this allocator holds a later pod; a record of an earlier pod on the same device
    appears. The earlier pod wins here too, whichever arrived first."""
    s = AllocatorState()
    s.set_node(_inv())
    assert s.restore([_res("late", 2000, 60)]) == []
    lost: list[RestoreConflict] = []
    s.restore([_res("early", 1000, 60)], on_conflict=lost.append)
    assert [c.loser.pod.uid for c in lost] == ["late"]
    assert s.reservation("early") is not None and s.reservation("late") is None
    s.check_invariants()
    assert s._cpu_mem["n1"] == (1000, 2 * GI)


def test_restore_of_a_grant_bigger_than_the_device_is_refused() -> None:
    s = AllocatorState()
    s.set_node(_inv())
    lost: list[RestoreConflict] = []
    s.restore([_res("greedy", 1000, 81)], on_conflict=lost.append)
    assert lost and s.reservation("greedy") is None and s.usage("n1") == {}


# --------------------------------------------------------------------------- (b) the record's MAC, no cluster

def _record(uid: str, ns: str, name: str, node: str, gib: int, device: int = 0) -> str:
    return annotation_json(Reservation(PodRef(uid, ns, name, 0), node, (("main", (Grant(
        f"nvidia-{device}", f"GPU-{device}", device, "nvidia", "a100-80g", "nvl0", gib * GI, 0),)),), "confirmed"))


def test_record_mac_binds_pod_node_devices_and_bytes() -> None:
    key = RecordKey(os.urandom(32))
    me = PodIdentity("uid-1", "team-a", "p", "n1")
    text = _record("uid-1", "team-a", "p", "n1", 1)
    sig = key.sign(text)
    assert key.check(text, sig, me).pod.uid == "uid-1"
    bigger = text.replace(str(GI), str(80 * GI))
    cases = {
        "unsigned": (text, None, me),
        "signature": (bigger, sig, me),  # bytes changed after signing
        "forged key": (text, RecordKey(os.urandom(32)).sign(text), me),
        "uid": (text, sig, PodIdentity("uid-2", "team-a", "p", "n1")),  # copied onto another pod
        "node": (text, sig, PodIdentity("uid-1", "team-a", "p", "n2")),
        "pod": (text, sig, PodIdentity("uid-1", "team-b", "p", "n1")),
    }
    for reason, (t, s_, who) in cases.items():
        before = _rejected(reason.split()[0] if reason != "forged key" else "signature", "test")
        with pytest.raises(RecordError):
            key.check(t, s_, who, component="test")
        after = _rejected(reason.split()[0] if reason != "forged key" else "signature", "test")
        assert after == before + 1, reason
    empty_uid = _record("", "team-a", "p", "n1", 1)
    with pytest.raises(RecordError, match="no pod uid"):
        key.check(empty_uid, key.sign(empty_uid), me)
    with pytest.raises(RecordError, match="no pod uid"):  # identity checks hold without a key too
        RecordKey(None).check(empty_uid, None, me)


def test_webhook_validate_denies_record_writes_but_the_allocators(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The fallback for clusters without ValidatingAdmissionPolicy, through the real HTTPS webhook."""
    certs: CertPaths = generate_certs(tmp_path_factory.mktemp("sec-records-validate"))
    allocator, agent = sa_user("hcs", "hcs-allocator"), sa_user("hcs", "hcs-node-agent")
    cfg = WebhookConfig(assignment_writers=(allocator,), node_assignment_writers=(agent,))
    forged = {"hcs.io/assignment": _record("u1", "team-a", "p", "n1", 80)}
    with webhook(certs, cfg) as c:
        resp = c.admit("validate", review(pod("p", "1Gi", annotations=forged)))
        assert resp["allowed"] is False and "only the HCS allocator" in resp["status"]["message"]
        old = pod("p", "1Gi", node="n1")
        new = pod("p", "1Gi", annotations=forged, node="n1")
        assert c.admit("validate", review(new, operation="UPDATE", old=old))["allowed"] is False
        # removing the allocator's record is a change too
        assert c.admit("validate", review(old, operation="UPDATE", old=new))["allowed"] is False
        # legitimate: the allocator, a node agent on the pod's node, a tenant's other annotations
        assert c.admit("validate", review(new, operation="UPDATE", old=old, user=allocator))["allowed"] is True
        on_n1 = {"authentication.kubernetes.io/node-name": ["n1"]}
        on_n2 = {"authentication.kubernetes.io/node-name": ["n2"]}
        assert c.admit("validate", review(new, operation="UPDATE", old=old, user=agent, extra=on_n1))["allowed"]
        denied = c.admit("validate", review(new, operation="UPDATE", old=old, user=agent, extra=on_n2))
        assert denied["allowed"] is False and "bound to that node" in denied["status"]["message"]
        tenant_edit = pod("p", "1Gi", annotations={"team": "x"}, node="n1")
        assert c.admit("validate", review(tenant_edit, operation="UPDATE", old=old))["allowed"] is True
        # a workload template carrying a record is refused before its pods copy it
        deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                      "spec": {"template": {"metadata": {"annotations": forged},
                                            "spec": pod("x", "1Gi")["spec"]}}}
        resp = c.admit("validate", review(deployment, kind="Deployment"))
        assert resp["allowed"] is False and "spec.template.metadata.annotations[hcs.io/assignment]" in \
            resp["status"]["message"]


# --------------------------------------------------------------------------- the real API server

@pytest.fixture(scope="module")
def rest(api_client: Any) -> KubeRest:
    return KubeRest(api_client)


@pytest.fixture(scope="module")
def spaces(rest: KubeRest) -> Iterator[dict[str, str]]:
    names = {"guarded": f"hcs-sr-guarded-{RUN}", "open": f"hcs-sr-open-{RUN}", "node": f"hcs-sr-node-{RUN}",
             "node2": f"hcs-sr-node2-{RUN}", "node3": f"hcs-sr-node3-{RUN}", "release": f"hcs-sr-rel-{RUN}"}
    for key in ("guarded", "open", "release"):
        ensure(rest, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": names[key], "labels": {"hcs-sec-records": RUN if key == "guarded" else "no"}}})
    for key in ("node", "node2", "node3"):  # one node per test: each test sees only its own pods there
        taint_node(rest, names[key])
    yield names
    for key in ("guarded", "open", "release"):
        delete(rest, f"/api/v1/namespaces/{names[key]}")
    for key in ("node", "node2", "node3"):
        delete(rest, f"/api/v1/nodes/{names[key]}")


@pytest.fixture(scope="module")
def policy(rest: KubeRest, spaces: dict[str, str]) -> Iterator[dict[str, str]]:
    """The chart's assignment-records ValidatingAdmissionPolicy, bound to this test's namespace only."""
    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found (built with the local cluster): cannot render the chart's policy")
    groups = rest.request("GET", "/apis/admissionregistration.k8s.io/v1")
    assert any(r["name"] == "validatingadmissionpolicies" for r in groups["resources"]), \
        "this API server has no ValidatingAdmissionPolicy (GA since 1.30)"
    release = f"sr{RUN}"
    docs = render_chart(helm, release, spaces["release"])
    vap = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy" and
               d["metadata"]["name"].endswith("-assignment-records"))
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding" and
                   d["metadata"]["name"] == vap["metadata"]["name"])
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {"hcs-sec-records": RUN}}}
    base = "/apis/admissionregistration.k8s.io/v1"
    ensure(rest, f"{base}/validatingadmissionpolicies", vap)
    ensure(rest, f"{base}/validatingadmissionpolicybindings", binding)
    users = {"allocator": sa_user(spaces["release"], f"{release}-hcs-allocator"),
             "agent": sa_user(spaces["release"], f"{release}-hcs-node-agent"),
             "tenant": sa_user(spaces["guarded"], "tenant")}
    grant_in_namespace(rest, spaces["guarded"], "sec-records-pods", list(users.values()),
                       [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "create", "patch", "delete"]}])
    yield users
    delete(rest, f"{base}/validatingadmissionpolicybindings/{binding['metadata']['name']}")
    delete(rest, f"{base}/validatingadmissionpolicies/{vap['metadata']['name']}")


def _patch(rest: KubeRest, ns: str, name: str, annotations: dict[str, Any]) -> dict[str, Any]:
    return rest.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}",
                        body={"metadata": {"annotations": annotations}}, content_type="application/merge-patch+json")


@pytest.mark.cluster
def test_tenant_write_of_the_record_is_denied_by_the_charts_policy(kube_cluster: Any, rest: KubeRest,
                                                                  spaces: dict[str, str],
                                                                  policy: dict[str, str]) -> None:
    ns, node = spaces["guarded"], spaces["node"]
    tenant = impersonating(kube_cluster.kubeconfig, policy["tenant"])
    forged = {"hcs.io/assignment": _record("x", ns, "forged", node, 80)}

    def denied_create() -> bool:  # the API server loads new policies asynchronously
        try:
            tenant.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod("forged", "1Gi", annotations=forged),
                           query={"dryRun": "All"})
        except KubeError as exc:
            return exc.status in (403, 422) and "only the HCS allocator" in str(exc)
        return False

    wait_for("the assignment-records policy to take effect", denied_create, timeout=60, interval=1)
    created = tenant.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod("mine", "1Gi", node=node))
    name = created["metadata"]["name"]
    with pytest.raises(KubeError) as info:
        _patch(tenant, ns, name, {"hcs.io/assignment": _record(created["metadata"]["uid"], ns, name, node, 80)})
    assert info.value.status in (403, 422) and "only the HCS allocator" in str(info.value)
    # legitimate use: the tenant's own annotations; the allocator writing the record
    _patch(tenant, ns, name, {"team": "a"})
    allocator = impersonating(kube_cluster.kubeconfig, policy["allocator"])
    record = _record(created["metadata"]["uid"], ns, name, node, 1)
    _patch(allocator, ns, name, {"hcs.io/assignment": record})
    # the tenant cannot remove or replace it either
    with pytest.raises(KubeError):
        _patch(tenant, ns, name, {"hcs.io/assignment": None})
    # a node agent only on pods bound to its own node (node from the token's node-name claim)
    other = impersonating(kube_cluster.kubeconfig, policy["agent"],
                          extra={"authentication.kubernetes.io/node-name": ["some-other-node"]})
    with pytest.raises(KubeError):
        _patch(other, ns, name, {"hcs.io/assignment-signature": "hmac-sha256:x"})
    mine = impersonating(kube_cluster.kubeconfig, policy["agent"],
                         extra={"authentication.kubernetes.io/node-name": [node]})
    _patch(mine, ns, name, {"hcs.io/assignment-signature": "hmac-sha256:x"})
    got = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")["metadata"]["annotations"]
    assert got["hcs.io/assignment"] == record and got["team"] == "a"


def _device(i: int, gib: int = 80) -> Device:
    return Device(vendor=Vendor.NVIDIA, model="a100-80g", name="test device", uuid=f"GPU-{i}", index=i,
                  pci_bus_id=f"0000:{i + 16:02x}:00.0", numa_node=0, vram_total_bytes=gib * GI, vram_used_bytes=0,
                  compute=Compute(312.0, 19.5, 624.0, 1.0))


@pytest.mark.cluster
def test_forged_record_is_ignored_by_agent_and_allocator(rest: KubeRest, spaces: dict[str, str]) -> None:
    """The 1Gi-asks-80Gi scenario: the admin (admission bypassed: no policy binds this namespace)
    writes forged records; neither the node agent nor the allocator trusts them."""
    from hcs.allocator.kube import KubeSync
    from hcs.node.sources import KubePodLister

    ns, node = spaces["open"], spaces["node2"]
    key = RecordKey(os.urandom(32))
    sync = KubeSync(rest, AllocatorState(), records=key)
    sync.state.set_node(_inv(node))
    created = {n: rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod(n, v, node=node))
               for n, v in (("holder", "60Gi"), ("attacker", "1Gi"), ("nouid", "1Gi"), ("copycat", "1Gi"))}
    holder = created["holder"]["metadata"]
    res = Reservation(PodRef(holder["uid"], ns, "holder", 0), node, (("main", (Grant(
        "nvidia-0", "GPU-0", 0, "nvidia", "a100-80g", "nvl0", 60 * GI, 0),)),), "confirmed")
    sync.annotate(res, ns, "holder")  # genuine, signed
    held = rest.request("GET", f"/api/v1/namespaces/{ns}/pods/holder")["metadata"]["annotations"]
    # forged: 80Gi on the holder's device, unsigned; an empty uid; the holder's genuine record copied
    forged = _record(created["attacker"]["metadata"]["uid"], ns, "attacker", node, 80)
    _patch(rest, ns, "attacker", {"hcs.io/assignment": forged, "hcs.io/assignment-signature": "hmac-sha256:AAAA"})
    no_uid = _record("", ns, "nouid", node, 80)
    _patch(rest, ns, "nouid", {"hcs.io/assignment": no_uid, "hcs.io/assignment-signature": key.sign(no_uid)})
    _patch(rest, ns, "copycat", {"hcs.io/assignment": held["hcs.io/assignment"],
                                 "hcs.io/assignment-signature": held["hcs.io/assignment-signature"]})
    for forger in ("attacker", "nouid", "copycat"):  # and the label the allocator's pod watch selects on
        rest.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{forger}",
                     body={"metadata": {"labels": {"hcs.io/allocator": "assigned"}}},
                     content_type="application/merge-patch+json")

    before = {r: _rejected(r, "node-agent") for r in ("signature", "uid")}
    lister = KubePodLister(rest, node, key)
    src = LocalAssignmentSource(lambda: [_device(0), _device(1)], lister)
    got = {a.pod.name: a for a in src.assignments()}
    assert set(got) == {"holder", "attacker", "nouid", "copycat"}
    grants = {n: [(g.key, g.vram_bytes) for c in a.containers for g in c.devices] for n, a in got.items()}
    assert grants["holder"] == [("nvidia-0", 60 * GI)]
    for name in ("attacker", "nouid", "copycat"):  # placed by their real request, not the record
        assert [b for _, b in grants[name]] == [GI], (name, grants[name])
    per_device: dict[str, int] = {}
    for gs in grants.values():
        for k, b in gs:
            per_device[k] = per_device.get(k, 0) + b
    assert all(b <= 80 * GI for b in per_device.values()), per_device
    assert _rejected("signature", "node-agent") == before["signature"] + 1
    assert _rejected("uid", "node-agent") == before["uid"] + 2
    src.assignments()  # the agent re-lists all the time: each forged record is logged and counted once
    assert _rejected("uid", "node-agent") == before["uid"] + 2

    problems = [p for p in sync.resync() if f"pod {ns}/" in p]
    kept = {r.pod.name for r in sync.state.reservations(node)}
    assert kept == {"holder"}, (kept, problems)
    assert sync.state.usage(node) == {"nvidia-0": (60 * GI, 0)}
    text = "\n".join(problems)
    assert f"pod {ns}/attacker" in text and "does not match" in text
    assert f"pod {ns}/nouid" in text and f"pod {ns}/copycat" in text


@pytest.mark.cluster
def test_restore_with_conflicting_genuine_records_reports_the_later_pod(rest: KubeRest,
                                                                        spaces: dict[str, str]) -> None:
    """A split brain wrote two valid records for one device: after a restart the earlier pod keeps
    it, the later pod gets an Event and the conflict metric counts it."""
    from hcs.allocator.kube import KubeSync

    ns, node = spaces["open"], spaces["node3"]
    key = RecordKey(os.urandom(32))
    writer = KubeSync(rest, AllocatorState(), records=key)
    pods = {}
    for name in ("first", "second"):
        pods[name] = rest.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod(name, "60Gi", node=node))
        time.sleep(1.1)  # creationTimestamp has one-second resolution
    for name, p in pods.items():
        writer.annotate(Reservation(PodRef(p["metadata"]["uid"], ns, name, 0), node, (("main", (Grant(
            "nvidia-1", "GPU-1", 1, "nvidia", "a100-80g", "nvl0", 60 * GI, 0),)),), "confirmed"), ns, name)
    restarted = KubeSync(rest, AllocatorState(), records=key)
    conflicts = restarted.metrics.registry  # the allocator's own metrics (served on its /metrics)
    restarted.state.set_node(_inv(node))
    problems = [p for p in restarted.resync() if f"pod {ns}/second" in p]
    assert problems and "later pod loses" in problems[0]
    names = {r.pod.name for r in restarted.state.reservations(node) if r.pod.namespace == ns}
    assert "first" in names and "second" not in names
    restarted.state.check_invariants()
    assert conflicts.get_sample_value("hcs_allocator_conflicts_total", {"kind": "restore"}) == 1

    def event() -> list[dict[str, Any]]:
        items = rest.request("GET", f"/api/v1/namespaces/{ns}/events",
                             query={"fieldSelector": "involvedObject.name=second"}).get("items") or []
        return [e for e in items if e.get("reason") == "HcsAssignmentConflict"]

    [ev] = wait_for("the conflict Event", event, timeout=20)
    assert "held by the earlier" in ev["message"] and f"{ns}/first" in ev["message"]
    restarted.resync()  # reported once, not on every resync
    assert len(event()) == 1


def test_local_policy_never_adopts_an_overcommitting_record() -> None:
    """Defence in depth: even a record that passes the MAC is adopted only where it fits."""
    from hcs.node.assignments import PodDemand, StaticPodLister
    from hcs.node.assignments import PodRef as NodePodRef

    big = Assignment(NodePodRef("b", "ns", "b", 2), (ContainerAssignment("main", (DeviceGrant(
        Vendor.NVIDIA, 0, "GPU-0", 80 * GI),)),))
    held = Assignment(NodePodRef("a", "ns", "a", 1), (ContainerAssignment("main", (DeviceGrant(
        Vendor.NVIDIA, 0, "GPU-0", 60 * GI),)),))
    lister = StaticPodLister([PodDemand(held.pod, (("main", 60 * GI),), held),
                              PodDemand(big.pod, (("main", GI),), big)])
    got = {a.pod.uid: a for a in LocalAssignmentSource(lambda: [_device(0)], lister).assignments()}
    assert got["a"] == held and got["b"].containers[0].devices[0].vram_bytes == GI
    assert json.loads(dumps(got["b"], node="n"))["node"] == "n"


def test_chart_guards_the_record_with_the_policy_or_else_the_webhook() -> None:
    """Default: the ValidatingAdmissionPolicy guards record writes and the webhook sees only ephemeral
    containers; with records.admissionPolicy=false the webhook's /validate takes the record rule."""
    from hcs.webhook.manifests import EPHEMERAL, POD_UPDATE_MATTERS

    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found (built with the local cluster)")

    def shape(**values: Any) -> tuple[set[str], dict[str, Any], dict[str, Any]]:
        docs = render_chart(helm, "hcs", "hcs-system", **values)
        policies = {d["metadata"]["name"] for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
        validating = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
        hook = next(w for w in validating["webhooks"] if w["name"] == "records.webhook.ai.compute")
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "hcs-webhook")
        import yaml

        return policies, hook, yaml.safe_load(cm["data"]["config.yaml"])["webhook"]

    policies, hook, cfg = shape()
    assert "hcs-assignment-records" in policies
    assert hook["rules"][0]["resources"] == ["pods/ephemeralcontainers"]
    assert hook["matchConditions"][0]["expression"] == EPHEMERAL
    policies, hook, cfg = shape(**{"records.admissionPolicy": False})
    assert "hcs-assignment-records" not in policies
    assert hook["rules"][0]["resources"] == ["pods", "pods/ephemeralcontainers"]
    assert hook["matchConditions"][0]["expression"] == POD_UPDATE_MATTERS
    assert cfg["assignmentWriters"] == ["system:serviceaccount:hcs-system:hcs-allocator"]
    assert cfg["nodeAssignmentWriters"] == ["system:serviceaccount:hcs-system:hcs-node-agent"]
