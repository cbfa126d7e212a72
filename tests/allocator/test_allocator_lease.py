"""Against the real kube-apiserver: the Lease survives a hung renewal call (each call is bounded, the next
try goes out on a fresh connection), with a control showing the same hang loses it when a call may run
longer than the Lease's validity (the old 10 s client timeout); and ``KubeSync.adopt`` lists once per
process, asking the server only for unlabelled pods (a Lease regained does not relist every pod)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hcs.allocator.kube import LABEL, KubeSync, LeaderElector
from hcs.allocator.placement import ANN_ASSIGNMENT
from hcs.allocator.state import AllocatorState
from hcs.kube import KubeError, KubeRest
from hcs.testing.allocator_procs import kubeconfig_via, server_of

pytestmark = pytest.mark.cluster
LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


class StallProxy:
    """127.0.0.1:<port> → the API server. :meth:`stall` freezes every connection open now: bytes stop
    flowing both ways while the sockets stay open (a hung call, as on an overloaded API server or network);
    connections opened later pass."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.frozen: list[threading.Event] = []
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
                u = socket.create_connection(self.target)
            except OSError:
                return
            ev = threading.Event()
            self.frozen.append(ev)
            self.socks += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b, ev), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket, frozen: threading.Event) -> None:
        while True:
            try:
                data = a.recv(65536)
            except OSError:
                return
            while frozen.is_set():
                time.sleep(0.05)
                if a.fileno() < 0:
                    return
            try:
                if not data:
                    b.shutdown(socket.SHUT_WR)
                    return
                b.sendall(data)
            except OSError:
                return

    def stall(self) -> None:
        for ev in self.frozen:
            ev.set()

    def close(self) -> None:
        self.srv.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


def _client(kubeconfig: Path) -> KubeRest:
    """As ``hcs allocator`` builds the elector's client: its own pool, no hidden urllib3 retries."""
    from hcs.allocator.cli import _api_client

    return KubeRest(_api_client(str(kubeconfig), retries=0))


def _hold(via: Path, proxy: StallProxy, name: str, call_timeout_s: float,
          seconds: float) -> tuple[bool, LeaderElector, threading.Thread]:
    """Acquire a 9 s Lease (leader for 6 s after each renewal), hang its pooled connection, keep renewing
    for ``seconds``: (ever lost?, elector)."""
    el = LeaderElector(_client(via), "default", name, f"holder-{uuid.uuid4().hex[:4]}", duration_s=9,
                       retry_s=1.0, timeout_s=call_timeout_s)
    assert el.step() and el.is_leader()
    proxy.stall()  # the connection the renewals would reuse now hangs
    renewing = threading.Thread(target=el.run, daemon=True)
    renewing.start()
    lost = False
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        lost = lost or not el.is_leader()
        time.sleep(0.05)
    el._stop.set()
    return lost, el, renewing


def test_lease_renewal_survives_a_hung_call(kube_cluster: Any, api_client: Any, tmp_path: Path) -> None:
    rest = KubeRest(api_client)
    kubeconfig = Path(kube_cluster.kubeconfig)
    proxy = StallProxy(server_of(kubeconfig))
    via = kubeconfig_via(kubeconfig, proxy.port, tmp_path / "via.kubeconfig")
    names = [f"hcs-lease-hang-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    threads: list[threading.Thread] = []
    try:
        lost, el, t = _hold(via, proxy, names[0], call_timeout_s=1.5, seconds=12)
        threads.append(t)
        assert not lost, "the Lease was lost to one hung renewal call"
        assert el.renewals >= 4
        # control: the same hang with a call allowed to outlast the Lease's validity (6 s of a 9 s Lease)
        lost, _, t = _hold(via, proxy, names[1], call_timeout_s=10.0, seconds=8)
        threads.append(t)
        assert lost, "the control did not hang: the test proves nothing"
    finally:
        proxy.close()
        for t in threads:  # their last (hung) call fails once the proxy is gone
            t.join(timeout=15)
        for n in names:  # (an elector's last call may still be on its way: delete until gone)
            for _ in range(20):
                with contextlib.suppress(KubeError):
                    rest.request("DELETE", f"{LEASES}/{n}")
                try:
                    rest.request("GET", f"{LEASES}/{n}")
                except KubeError as exc:
                    if exc.status == 404:
                        break
                time.sleep(0.5)


class CountingRest(KubeRest):
    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        self.calls.append((method, path, dict(kw.get("query") or {})))
        return super().request(method, path, **kw)


def test_adopt_labels_old_pods_once_and_never_lists_again(api_client: Any) -> None:
    rest = CountingRest(api_client)
    name = f"hcs-adopt-{uuid.uuid4().hex[:6]}"
    rest.request("POST", "/api/v1/namespaces/default/pods", body={
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": {ANN_ASSIGNMENT: "{}"}},
        "spec": {"schedulerName": "hcs-scheduler", "containers": [{"name": "main", "image": "busybox"}]}})
    try:
        sync = KubeSync(rest, AllocatorState())
        rest.calls.clear()
        assert sync.adopt() >= 1
        pod = rest.request("GET", f"/api/v1/namespaces/default/pods/{name}")
        assert pod["metadata"]["labels"][LABEL] == "assigned"
        lists = [c for c in rest.calls if c[:2] == ("GET", "/api/v1/pods")]
        assert lists and all(q.get("labelSelector") == f"!{LABEL}" for _, _, q in lists)
        rest.calls.clear()
        assert sync.adopt() == 0  # e.g. the Lease lost and regained: the watched state is current
        assert rest.calls == []
    finally:
        with contextlib.suppress(KubeError):
            rest.request("DELETE", f"/api/v1/namespaces/default/pods/{name}", query={"gracePeriodSeconds": "0"})
