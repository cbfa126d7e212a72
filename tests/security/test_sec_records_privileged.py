"""Attack 8 (issue 16): privileged containers and quota-check gaps in quota'd pods.

Before: ``capabilities.add: [CAP_SYS_ADMIN]`` (with the prefix), a privileged init or ephemeral
container, ``hostPID`` and ``SYS_PTRACE`` were admitted next to an ``ai.compute/vram`` quota. Each
attack is posted to the real HTTPS webhook and must be denied with one line naming the field and
the fix; the same pod without the escape, and a privileged pod without a quota, are still admitted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from sec_records_helpers import HttpsClient, pod, review, webhook

from hcs.webhook.certs import CertPaths, generate_certs
from hcs.webhook.config import Mode, WebhookConfig


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate_certs(tmp_path_factory.mktemp("sec-records-certs"))


@pytest.fixture(scope="module")
def client(certs: CertPaths) -> Any:
    with webhook(certs) as c:
        yield c


def _sc(**sc: Any) -> Callable[[dict[str, Any]], None]:
    def edit(p: dict[str, Any]) -> None:
        p["spec"]["containers"][0]["securityContext"] = sc
    return edit


def _init(p: dict[str, Any]) -> None:
    p["spec"]["initContainers"] = [{"name": "setup", "image": "busybox", "securityContext": {"privileged": True}}]


def _sidecar_caps(p: dict[str, Any]) -> None:  # a second container without any quota of its own
    p["spec"]["containers"].append({"name": "helper", "image": "busybox",
                                    "securityContext": {"capabilities": {"add": ["cap_sys_ptrace"]}}})


def _host(**spec: Any) -> Callable[[dict[str, Any]], None]:
    def edit(p: dict[str, Any]) -> None:
        p["spec"].update(spec)
    return edit


def _host_path(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(p: dict[str, Any]) -> None:
        p["spec"]["volumes"] = [{"name": "h", "hostPath": {"path": path}}]
    return edit


def _mount_at(path: str, container: int = 0) -> Callable[[dict[str, Any]], None]:
    """A volumeMount that would cover one of the node agent's in-container mounts (a ConfigMap subPath
    at /var/run/hcs/quota replaced the quota on the real cluster before admission denied it)."""
    def edit(p: dict[str, Any]) -> None:
        p["spec"]["volumes"] = [{"name": "fake", "configMap": {"name": "fake-quota"}}]
        while len(p["spec"]["containers"]) <= container:
            p["spec"]["containers"].append({"name": f"side{container}", "image": "busybox"})
        p["spec"]["containers"][container]["volumeMounts"] = [{"name": "fake", "mountPath": path, "subPath": "q"}]
    return edit


ATTACKS = [
    ("CAP_SYS_ADMIN", _sc(capabilities={"add": ["CAP_SYS_ADMIN"]}),
     "spec.containers[0].securityContext.capabilities.add[0]", "remove it from capabilities.add"),
    ("cap_sys_admin lower case", _sc(capabilities={"add": ["NET_BIND_SERVICE", "cap_sys_admin"]}),
     "spec.containers[0].securityContext.capabilities.add[1]", "remove it"),
    ("SYS_ADMIN", _sc(capabilities={"add": ["SYS_ADMIN"]}), "capabilities.add[0]", "remove it"),
    ("SYS_PTRACE", _sc(capabilities={"add": ["SYS_PTRACE"]}), "capabilities.add[0]", "remove it"),
    ("ALL", _sc(capabilities={"add": ["ALL"]}), "capabilities.add[0]", "remove it"),
    ("privileged", _sc(privileged=True), "spec.containers[0].securityContext.privileged", "remove privileged"),
    ("privileged init container", _init, "spec.initContainers[0].securityContext.privileged", "remove privileged"),
    ("SYS_PTRACE in a sidecar", _sidecar_caps, "spec.containers[1].securityContext.capabilities.add[0]",
     "remove it"),
    ("hostPID", _host(hostPID=True), "spec.hostPID", "remove hostPID"),
    ("hostPath /dev", _host_path("/dev"), "spec.volumes[0].hostPath.path", "not a hostPath"),
    ("hostPath /dev/nvidia0", _host_path("/dev/nvidia0"), "spec.volumes[0].hostPath.path", "not a hostPath"),
    ("hostPath / (contains /dev)", _host_path("/"), "spec.volumes[0].hostPath.path", "not a hostPath"),
    ("hostPath //dev/ (unnormalised)", _host_path("//dev/"), "spec.volumes[0].hostPath.path", "not a hostPath"),
    ("hostPath of the HCS run dir", _host_path("/run/hcs/quota"), "spec.volumes[0].hostPath.path", "/run/hcs"),
    ("allowPrivilegeEscalation", _sc(allowPrivilegeEscalation=True),
     "spec.containers[0].securityContext.allowPrivilegeEscalation", "set it to false"),
    ("mount over the quota file", _mount_at("/var/run/hcs/quota"), "spec.containers[0].volumeMounts[0].mountPath",
     "mount the volume elsewhere"),
    ("mount over /etc/ld.so.preload", _mount_at("/etc/ld.so.preload"),
     "spec.containers[0].volumeMounts[0].mountPath", "mount the volume elsewhere"),
    ("mount over the ledger, unnormalised", _mount_at("//var/run/hcs/./shm/"),
     "spec.containers[0].volumeMounts[0].mountPath", "mount the volume elsewhere"),
    ("mount over the interceptor in a sidecar", _mount_at("/usr/local/hcs/lib", 1),
     "spec.containers[1].volumeMounts[0].mountPath", "mount the volume elsewhere"),
]


@pytest.mark.parametrize(("what", "edit", "where", "fix"), ATTACKS, ids=[a[0] for a in ATTACKS])
@pytest.mark.parametrize("endpoint", ["mutate", "validate"])
def test_quota_escape_is_denied_with_field_and_fix(client: HttpsClient, endpoint: str, what: str,
                                                   edit: Callable[[dict[str, Any]], None], where: str,
                                                   fix: str) -> None:
    attack = pod("attack", "4Gi")
    edit(attack)
    resp = client.admit(endpoint, review(attack))
    assert resp["allowed"] is False, f"{what} was admitted through /{endpoint}"
    message = resp["status"]["message"]
    assert where in message and fix in message, message
    assert "\n" not in message
    # legitimate use still works: the same pod without the escape
    assert client.admit(endpoint, review(pod("fine", "4Gi")))["allowed"] is True


def test_privileged_pod_without_a_quota_is_not_hcs_business(client: HttpsClient) -> None:
    p = pod("system", None)
    _sc(privileged=True, capabilities={"add": ["SYS_ADMIN"]})(p)
    p["spec"]["hostPID"] = True
    assert client.admit("validate", review(p))["allowed"] is True


def test_privileged_ephemeral_container_is_denied_in_a_quota_pod(client: HttpsClient) -> None:
    """``kubectl debug --profile=sysadmin`` on a quota'd pod: the pods/ephemeralcontainers UPDATE."""
    old = pod("running", "4Gi")
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox", "targetContainerName": "main",
                                           "securityContext": {"privileged": True,
                                                               "capabilities": {"add": ["SYS_PTRACE"]}}}]
    resp = client.admit("validate", review(new, operation="UPDATE", old=old, sub_resource="ephemeralcontainers"))
    assert resp["allowed"] is False
    msg = resp["status"]["message"]
    assert "spec.ephemeralContainers[0].securityContext.privileged" in msg
    assert "spec.ephemeralContainers[0].securityContext.capabilities.add[0]" in msg
    # a plain debug container is fine
    new["spec"]["ephemeralContainers"][0].pop("securityContext")
    ok = client.admit("validate", review(new, operation="UPDATE", old=old, sub_resource="ephemeralcontainers"))
    assert ok["allowed"] is True


def test_dra_translated_pod_is_still_a_quota_pod(client: HttpsClient) -> None:
    """After DRA translation no ai.compute is left in the pod; its hcs-* claims still make it quota'd."""
    p = pod("dra", None)
    p["spec"]["resourceClaims"] = [{"name": "hcs-main", "resourceClaimTemplateName": "hcs-0123456789ab"}]
    p["spec"]["hostPID"] = True
    resp = client.admit("validate", review(p))
    assert resp["allowed"] is False and "spec.hostPID" in resp["status"]["message"]


def test_an_administrator_can_turn_denial_into_a_warning(certs: CertPaths) -> None:
    with webhook(certs, WebhookConfig(deny_privileged_with_quota=False, mode=Mode.DEVICE_PLUGIN)) as c:
        p = pod("allowed", "4Gi")
        _sc(privileged=True)(p)
        resp = c.admit("validate", review(p))
    assert resp["allowed"] is True and "denyPrivilegedWithQuota=false" in resp["warnings"][0]


@pytest.mark.parametrize("path", ["/etc", "/var/run", "/data/hcs", "/var/run/hcsx"])
def test_mounts_beside_or_above_the_agents_mounts_are_admitted(client: HttpsClient, path: str) -> None:
    """An ancestor is mounted first (by path depth) and the agent's mounts land on top; siblings never
    touch them: legitimate volumes stay allowed."""
    p = pod("ok-mount", "4Gi")
    _mount_at(path)(p)
    assert client.admit("validate", review(p))["allowed"] is True
