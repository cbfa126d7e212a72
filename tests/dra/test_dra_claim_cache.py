"""The watch-fed ResourceClaim cache (hcs/node/dra/claims.py) and prepare served from it.

Unit part (no cluster): which claims are kept, event handling, ClaimState falling back to its
claim source whenever the cache cannot answer for the exact UID. Cluster part (marker ``cluster``):
the cache against the local cluster's real kube-apiserver, including an expired resourceVersion
and an API server that becomes unreachable (a TCP proxy in front of it is closed and reopened).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dra_helpers import MemoryClaims, claim_object, count_claim_reads, make_devices  # noqa: E402

from hcs.kube import RESOURCE_API, KubeError, KubeRest, WatchExpired  # noqa: E402
from hcs.kubeletsim.dra import DraKubeletSim  # noqa: E402
from hcs.node.dra import checkpoint as ckpt  # noqa: E402
from hcs.node.dra.claims import ClaimCache, ours, trim  # noqa: E402
from hcs.node.dra.config import DraConfig  # noqa: E402
from hcs.node.dra.plugin import ApiClaimSource, DraPlugin  # noqa: E402
from hcs.node.dra.slices import published_devices  # noqa: E402
from hcs.node.dra.state import ClaimRef, ClaimState  # noqa: E402
from hcs.testing.kube_objects import (  # noqa: E402
    create_allocated_claim,
    delete_namespace,
    ensure_namespace,
    wait_for,
)

DRIVER = "ai.compute"


# ------------------------------------------------------------------ unit tests
def _claim(name: str, uid: str, node: str, device: str = "nvidia-0", driver: str = DRIVER) -> dict[str, Any]:
    c = claim_object("ns", name, uid, node, [{"request": "gpu", "device": device}], driver=driver)
    c["metadata"]["managedFields"] = [{"manager": "kube-scheduler", "fieldsV1": {"f:status": {}}}]
    c["metadata"]["resourceVersion"] = "7"
    return c


def test_ours_and_trim_keep_only_what_prepare_reads() -> None:
    mine = _claim("a", "u1", "node-a")
    assert ours(mine, DRIVER, "node-a")
    assert not ours(mine, DRIVER, "node-b") and not ours(mine, "other.driver", "node-a")
    for bad in ({}, {"status": None}, {"status": {"allocation": {"devices": {"results": ["x", None]}}}}, [], "x"):
        assert not ours(bad, DRIVER, "node-a")
    t = trim(mine)
    assert t["metadata"] == {"name": "a", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}
    assert t["status"] == {"allocation": mine["status"]["allocation"]} and "spec" not in t


def test_events_update_the_cache_and_lookup_needs_sync_and_uid() -> None:
    cache = ClaimCache(KubeRest(None), DRIVER, "node-a")  # not started: events are fed directly
    cache._apply({"type": "ADDED", "object": _claim("a", "u1", "node-a")})
    cache._apply({"type": "ADDED", "object": _claim("b", "u2", "node-b")})  # other node: not kept
    assert len(cache) == 1
    assert cache.lookup("ns", "a", "u1") is None, "not synced: must not answer"
    cache._synced.set()
    assert cache.lookup("ns", "a", "u1")["metadata"]["uid"] == "u1"
    assert cache.lookup("ns", "a", "other-uid") is None and cache.lookup("ns", "b", "u2") is None
    dealloc = _claim("a", "u1", "node-a")
    dealloc["status"] = {}
    cache._apply({"type": "MODIFIED", "object": dealloc})  # deallocated: dropped
    assert cache.lookup("ns", "a", "u1") is None
    cache._apply({"type": "ADDED", "object": _claim("c", "u3", "node-a")})
    cache._apply({"type": "DELETED", "object": _claim("c", "u3", "node-a")})
    assert len(cache) == 0
    cache._apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}})
    assert cache.resource_version == "99"
    for junk in (None, "x", {"type": "ADDED"}, {"type": "ADDED", "object": "x"}, {"type": "ADDED", "object": {}}):
        cache._apply(junk)  # never raises on bad input
    with pytest.raises(WatchExpired):
        cache._apply({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})
    with pytest.raises(KubeError):
        cache._apply({"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "boom"}})


class DictCache:
    """A stand-in for the cache's lookup contract (the real cache is tested against the cluster)."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}

    def lookup(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        c = self.claims.get((namespace, name))
        return c if c is not None and c["metadata"]["uid"] == uid else None


def _state(tmp_path: Path, cache: DictCache | None) -> tuple[ClaimState, MemoryClaims, list[str]]:
    (tmp_path / "lib").mkdir(exist_ok=True)
    cfg = DraConfig(node_name="node-a", plugin_dir=str(tmp_path / "plugin"), cdi_dir=str(tmp_path / "cdi"),
                    interceptor_host_dir=str(tmp_path / "lib"))
    src = MemoryClaims()
    reads = count_claim_reads(src)
    pub = published_devices(make_devices(4), cfg)
    st = ClaimState(cfg, src, lambda: pub, cache=cache)
    st.recover()
    return st, src, reads


def test_prepare_uses_the_cache_only_for_the_same_uid(tmp_path: Path) -> None:
    cache = DictCache()
    st, src, reads = _state(tmp_path, cache)
    old = _claim("c", "uid-old", "node-a")
    new = _claim("c", "uid-new", "node-a", device="nvidia-1")
    cache.claims[("ns", "c")] = old
    src.add(new)  # the API server already has the re-created claim
    src.down = True
    out = st.prepare([ClaimRef("ns", "uid-old", "c")])  # cache hit: no API read even while it is down
    assert out["uid-old"].error == "" and reads == []
    src.down = False
    out = st.prepare([ClaimRef("ns", "uid-new", "c")])  # cache has another UID: GET, accepted
    assert out["uid-new"].error == "" and out["uid-new"].devices[0].device_name == "nvidia-1" and reads == ["c"]
    cache.claims.clear()
    st.unprepare([ClaimRef("ns", "uid-old", "c")])
    out = st.prepare([ClaimRef("ns", "uid-old", "c")])  # miss: GET says re-created: rejected
    assert "re-created" in out["uid-old"].error and reads == ["c", "c"]


def test_a_cached_claim_that_fails_the_checks_is_judged_on_the_api_copy(tmp_path: Path) -> None:
    cache = DictCache()
    st, src, reads = _state(tmp_path, cache)
    stale = _claim("c", "u1", "node-a", device="nvidia-9")  # a device this node does not have
    cache.claims[("ns", "c")] = stale
    src.add(_claim("c", "u1", "node-a", device="nvidia-2"))
    out = st.prepare([ClaimRef("ns", "u1", "c")])
    assert out["u1"].error == "" and out["u1"].devices[0].device_name == "nvidia-2" and reads == ["c"]
    cache.claims[("ns", "d")] = _claim("d", "u2", "node-a", device="nvidia-9")
    src.add(_claim("d", "u2", "node-a", device="nvidia-9"))
    assert "not a device of driver" in st.prepare([ClaimRef("ns", "u2", "d")])["u2"].error


def test_batch_mixes_cached_and_listed_claims(tmp_path: Path) -> None:
    cache = DictCache()
    st, src, reads = _state(tmp_path, cache)
    refs = []
    for i in range(12):
        c = _claim(f"b{i}", f"u{i}", "node-a", device=f"nvidia-{i % 4}")
        src.add(c)
        if i % 2 == 0:
            cache.claims[("ns", f"b{i}")] = c
        refs.append(ClaimRef("ns", f"u{i}", f"b{i}"))
    out = st.prepare(refs)
    assert all(o.error == "" for o in out.values()) and len(out) == 12
    assert sorted(reads) == sorted(f"b{i}" for i in range(1, 12, 2))


def test_crash_after_files_before_completion_is_swept_and_reprepared(tmp_path: Path) -> None:
    st, src, _ = _state(tmp_path, None)
    src.add(_claim("c", "u1", "node-a"))
    ref = ClaimRef("ns", "u1", "c")
    plan = st._plan(ref, src.claims[("ns", "c")])
    st._write(plan)  # the process dies here: files written, no checkpoint entry
    assert plan.spec_path.exists() and plan.claim_dir.exists()
    st2, src2, _ = _state(tmp_path, None)  # restart
    assert not plan.spec_path.exists() and not plan.claim_dir.exists() and st2.claims == {}
    src2.add(_claim("c", "u1", "node-a"))
    assert st2.prepare([ref])["u1"].error == ""  # the kubelet retries
    assert set(ckpt.load(st2.checkpoint_path)) == {"u1"} and plan.spec_path.exists()


def test_checkpoint_write_failure_reports_the_claim_and_removes_its_files(tmp_path: Path) -> None:
    st, src, _ = _state(tmp_path, None)
    src.add(_claim("c", "u1", "node-a"))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    st.checkpoint_path = blocker / "checkpoint.json"
    out = st.prepare([ClaimRef("ns", "u1", "c")])
    assert "checkpoint" in out["u1"].error and st.claims == {}
    assert list((tmp_path / "cdi").glob("*.json")) == [] and not (st.claims_dir / "u1").exists()


def test_legacy_started_entries_are_cleaned_on_recover(tmp_path: Path) -> None:
    st, _, _ = _state(tmp_path, None)
    spec = tmp_path / "cdi" / "ai.compute-device_old.json"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text("{}")
    ckpt.save(st.checkpoint_path, {"old": ckpt.ClaimEntry(uid="old", namespace="ns", name="o",
                                                           state=ckpt.STARTED, cdi_spec=str(spec))})
    st2, _, _ = _state(tmp_path, None)
    assert st2.claims == {} and not spec.exists()


def test_entry_whose_cdi_spec_vanished_is_forgotten_and_prepared_again(tmp_path: Path) -> None:
    st, src, _ = _state(tmp_path, None)
    src.add(_claim("c", "u1", "node-a"))
    ref = ClaimRef("ns", "u1", "c")
    assert st.prepare([ref])["u1"].error == ""
    spec, claim_dir = Path(st.claims["u1"].cdi_spec), Path(st.claims["u1"].claim_dir)
    spec.unlink()  # e.g. /var/run/cdi is a tmpfs and the node rebooted
    st2, src2, _ = _state(tmp_path, None)  # recovers
    assert st2.claims == {} and not claim_dir.exists() and ckpt.load(st2.checkpoint_path) == {}
    src2.add(_claim("c", "u1", "node-a"))
    assert st2.prepare([ref])["u1"].error == "" and spec.exists()


def test_config_claim_cache_setting() -> None:
    assert DraConfig.from_mapping({}, node_name="n").claim_cache is True
    assert DraConfig.from_mapping({"claimCache": False}, node_name="n").claim_cache is False
    from hcs.errors import ConfigError

    with pytest.raises(ConfigError, match="claimCache"):
        DraConfig.from_mapping({"claimCache": "yes"}, node_name="n")


def test_plugin_builds_the_cache_only_for_the_api_source(tmp_path: Path) -> None:
    cfg = DraConfig(node_name="n", plugin_dir=str(tmp_path / "p"), cdi_dir=str(tmp_path / "c"))
    assert DraPlugin(cfg, make_devices(1), None, claim_source=MemoryClaims()).claim_cache is None
    from kubernetes.client import ApiClient

    api = ApiClient()
    try:
        assert DraPlugin(cfg, make_devices(1), api).claim_cache is not None
        off = cfg.with_overrides(claim_cache=False)
        assert DraPlugin(off, make_devices(1), api).claim_cache is None
    finally:
        api.close()


# --------------------------------------------------------------- cluster tests
NODE = f"hcs-dra-cache-node-{os.getpid()}"
NS = f"hcs-dra-cache-{os.getpid()}"


class TcpProxy:
    """A loopback TCP forwarder in front of the API server, closed to make it 'unreachable'."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._srv: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(16)
        self.port = srv.getsockname()[1]
        self._srv = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            srv, self._srv = self._srv, None
            conns, self._conns = self._conns, []
        for s in [srv, *conns]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                down, _ = srv.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                down.close()
                continue
            with self._lock:
                if self._srv is not srv:
                    down.close()
                    up.close()
                    return
                self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def rest(api_client: Any) -> KubeRest:
    return KubeRest(api_client)


@pytest.fixture(scope="module")
def ns(rest: KubeRest):
    ensure_namespace(rest, NS)
    yield NS
    delete_namespace(rest, NS)


@pytest.fixture
def dra(rest: KubeRest, api_client: Any, ns: str, tmp_path: Path):
    (tmp_path / "lib").mkdir()
    cfg = DraConfig(node_name=NODE, plugins_registry=str(tmp_path / "registry"), plugin_dir=str(tmp_path / "plugin"),
                    cdi_dir=str(tmp_path / "cdi"), interceptor_host_dir=str(tmp_path / "lib"), publish_slices=False)
    plugin = DraPlugin(cfg, make_devices(4), api_client)
    plugin.start()
    sim = DraKubeletSim(tmp_path / "registry")
    sim.register()
    assert plugin.claim_cache is not None and plugin.claim_cache.wait_synced(30), plugin.claim_cache.last_error
    yield plugin, sim
    sim.close()
    plugin.stop()


def _result(device: str = "nvidia-0", pool: str = NODE, driver: str = DRIVER) -> dict[str, Any]:
    return {"request": "gpu", "driver": driver, "pool": pool, "device": device}


def _api_reads(plugin: DraPlugin) -> list[str]:
    """Count the plugin's claim GETs (the real source, only observed)."""
    src = plugin.state.source
    assert isinstance(src, ApiClaimSource)
    return count_claim_reads(src)


def _cached(cache: ClaimCache, name: str, uid: str) -> bool:
    return wait_for(lambda: cache.synced and (cache.get(NS, name) or {}).get("metadata", {}).get("uid") == uid,
                    15, interval_s=0.01) is not None


@pytest.mark.cluster
def test_cache_sees_allocated_claims_of_this_node_only(rest, dra):
    plugin, _ = dra
    cache = plugin.claim_cache
    mine = create_allocated_claim(rest, NS, "mine", [_result("nvidia-1")])
    other = create_allocated_claim(rest, NS, "other-node", [_result(pool="some-other-node")])
    foreign = create_allocated_claim(rest, NS, "other-driver", [_result(driver="gpu.example.com")])
    assert _cached(cache, "mine", mine["metadata"]["uid"]), "the cache did not see the allocated claim"
    got = cache.lookup(NS, "mine", mine["metadata"]["uid"])
    assert got["status"]["allocation"]["devices"]["results"][0]["device"] == "nvidia-1"
    assert "managedFields" not in got["metadata"]
    for c in (other, foreign):
        assert (NS, c["metadata"]["name"]) not in cache.items
    rest.request("DELETE", f"{RESOURCE_API}/namespaces/{NS}/resourceclaims/mine")
    assert wait_for(lambda: (NS, "mine") not in cache.items, 15, interval_s=0.01), "delete not seen"


@pytest.mark.cluster
def test_prepare_is_served_from_the_cache(rest, dra):
    plugin, sim = dra
    reads = _api_reads(plugin)
    c = create_allocated_claim(rest, NS, "served", [_result("nvidia-2")])
    ref = (NS, c["metadata"]["uid"], "served")
    assert _cached(plugin.claim_cache, "served", ref[1])
    hits = plugin.claim_cache.hits
    out = sim.prepare(DRIVER, [ref])[ref[1]]
    assert out.error == "" and out.devices[0].device_name == "nvidia-2"
    assert reads == [] and plugin.claim_cache.hits == hits + 1
    assert sim.unprepare(DRIVER, [ref])[ref[1]].error == ""


@pytest.mark.cluster
def test_recreated_claim_with_a_new_uid_falls_back_to_get(rest, dra):
    plugin, sim = dra
    reads = _api_reads(plugin)
    path = f"{RESOURCE_API}/namespaces/{NS}/resourceclaims/again"
    first = create_allocated_claim(rest, NS, "again", [_result("nvidia-0")])
    old = (NS, first["metadata"]["uid"], "again")
    assert _cached(plugin.claim_cache, "again", old[1])
    rest.request("DELETE", path)
    second = create_allocated_claim(rest, NS, "again", [_result("nvidia-3")])
    new = (NS, second["metadata"]["uid"], "again")
    assert _cached(plugin.claim_cache, "again", new[1])
    out = sim.prepare(DRIVER, [old])[old[1]]  # the kubelet still asks for the deleted claim
    assert "re-created" in out.error and reads == ["again"]
    out = sim.prepare(DRIVER, [new])[new[1]]
    assert out.error == "" and out.devices[0].device_name == "nvidia-3" and reads == ["again"]
    sim.unprepare(DRIVER, [new])

    # a cache that still holds the old UID (a snapshot that never saw the re-creation): GET, accepted
    frozen = ClaimCache(KubeRest(plugin.rest.api_client), DRIVER, NODE)
    frozen.relist()
    assert frozen.lookup(NS, "again", new[1]) is not None
    rest.request("DELETE", path)
    third = create_allocated_claim(rest, NS, "again", [_result("nvidia-1")])
    st = ClaimState(plugin.cfg, plugin.state.source, plugin.state.devices, cache=frozen)
    st.recover()
    ref = ClaimRef(NS, third["metadata"]["uid"], "again")
    out2 = st.prepare([ref])[ref.uid]
    assert out2.error == "" and out2.devices[0].device_name == "nvidia-1" and reads == ["again", "again"]
    st.unprepare([ref])
    st.close()
    rest.request("DELETE", path)


@pytest.mark.cluster
def test_claim_status_waits_for_a_pause_and_is_dropped_when_unprepared_first(rest, dra):
    plugin, sim = dra
    base = f"{RESOURCE_API}/namespaces/{NS}/resourceclaims"
    quick = create_allocated_claim(rest, NS, "quick", [_result("nvidia-0")])
    kept = create_allocated_claim(rest, NS, "kept", [_result("nvidia-1")])
    q = (NS, quick["metadata"]["uid"], "quick")
    k = (NS, kept["metadata"]["uid"], "kept")
    assert sim.prepare(DRIVER, [q])[q[1]].error == ""
    assert sim.unprepare(DRIVER, [q])[q[1]].error == ""  # well within STATUS_QUIET_S
    assert sim.prepare(DRIVER, [k])[k[1]].error == ""

    def devices(name: str) -> list[dict[str, Any]]:
        return (rest.request("GET", f"{base}/{name}").get("status") or {}).get("devices") or []

    assert wait_for(lambda: devices("kept"), 20), "status.devices of the prepared claim was not published"
    assert devices("kept")[0]["device"] == "nvidia-1"
    assert devices("quick") == [], "a claim unprepared before its status went out must not be marked Prepared"
    sim.unprepare(DRIVER, [k])


@pytest.mark.cluster
def test_watch_survives_an_expired_resource_version(rest, dra):
    plugin, sim = dra
    cache = plugin.claim_cache
    before = create_allocated_claim(rest, NS, "before-410", [_result("nvidia-2")])
    assert _cached(cache, "before-410", before["metadata"]["uid"])  # something for a replay to replay
    relists, events = cache.relists, cache.events
    # Far older than the API server's watch window: 410 Gone once its watch cache has dropped events of
    # this resource (the cache relists); a young API server instead replays the current claims as ADDED
    # (seen on a fresh cluster). Either way the watch resumes and serves what comes next.
    cache.reconnect("1")
    assert wait_for(lambda: cache.synced and (cache.relists > relists if cache.expired else cache.events > events),
                    30, interval_s=0.02), cache.last_error
    c = create_allocated_claim(rest, NS, "after-410", [_result("nvidia-1")])
    assert _cached(cache, "after-410", c["metadata"]["uid"]), "the watch did not resume"
    reads = _api_reads(plugin)
    ref = (NS, c["metadata"]["uid"], "after-410")
    assert sim.prepare(DRIVER, [ref])[ref[1]].error == "" and reads == []
    sim.unprepare(DRIVER, [ref])


@pytest.mark.cluster
def test_unreachable_api_server_keeps_content_but_stops_serving_it(rest, api_client, kube_cluster, ns, tmp_path):
    from kubernetes import config as kconfig

    host = api_client.configuration.host.removeprefix("https://")
    upstream = (host.rsplit(":", 1)[0], int(host.rsplit(":", 1)[1]))
    proxy = TcpProxy(upstream)
    proxy.open()
    proxied = kconfig.new_client_from_config(config_file=str(kube_cluster.kubeconfig))
    proxied.configuration.host = f"https://127.0.0.1:{proxy.port}"
    cache = ClaimCache(KubeRest(proxied, timeout_s=3), DRIVER, NODE, max_backoff_s=0.5)
    cache.start()
    try:
        assert cache.wait_synced(30), cache.last_error
        c = create_allocated_claim(rest, NS, "outage", [_result("nvidia-0")])
        uid = c["metadata"]["uid"]
        assert _cached(cache, "outage", uid)
        proxy.close()  # the API server is gone as far as the cache can tell
        assert wait_for(lambda: not cache.synced, 15, interval_s=0.02), "the broken watch was not noticed"
        assert (NS, "outage") in cache.items and cache.lookup(NS, "outage", uid) is None
        # prepare still works through the direct GET (the plugin's own source)
        (tmp_path / "lib").mkdir()
        cfg = DraConfig(node_name=NODE, plugin_dir=str(tmp_path / "p"), cdi_dir=str(tmp_path / "cdi"),
                        interceptor_host_dir=str(tmp_path / "lib"))
        pub = published_devices(make_devices(4), cfg)
        st = ClaimState(cfg, ApiClaimSource(rest), lambda: pub, cache=cache)
        st.recover()
        assert st.prepare([ClaimRef(NS, uid, "outage")])[uid].error == ""
        st.close()
        proxy.open()  # back on the same port: relist, then served again
        assert wait_for(lambda: cache.synced, 30, interval_s=0.05), cache.last_error
        assert cache.lookup(NS, "outage", uid) is not None
    finally:
        cache.stop()
        proxy.close()
        proxied.close()
    assert not cache.synced
