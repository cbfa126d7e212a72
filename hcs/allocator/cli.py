"""``hcs allocator`` (the daemon) and ``hcs alloc explain POD`` (why a pod fits or not, per node)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hcs.config import env_override, load_config, section
from hcs.errors import ConfigError, HcsError
from hcs.kube import KubeError, KubeRest
from hcs.signals import StopSignals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AllocatorConfig:
    grpc_address: str = "unix:///run/hcs/allocator.sock"
    extender_address: str = "0.0.0.0:8888"
    namespace: str = "hcs-system"
    lease_name: str = "hcs-allocator"
    lease_seconds: int = 10  # failover after a crash: at most this plus one standby poll (1 s)
    sync_interval_s: float = 2.0
    kubeconfig: str | None = None
    # Caller authentication of the gRPC API (hcs/allocator/auth.py); off only with --insecure-dev.
    tls_cert_file: str = ""  # allocator.tls.certFile: serving certificate for TCP listeners
    tls_key_file: str = ""  # allocator.tls.keyFile
    auth_audience: str = "hcs-allocator"  # allocator.auth.audience: the tokens' audience
    node_agent_users: tuple[str, ...] = ()  # allocator.auth.nodeAgentUsers: restricted to their own node
    auth_cache_ttl_s: float = 60.0  # allocator.auth.cacheTTLSeconds
    auth_cache_size: int = 4096  # allocator.auth.cacheSize
    # allocator.startBurstPerNode: pods a node may be starting before the extender prefers other fitting
    # nodes (AllocatorState.rank); 0: the policy's order as is
    start_burst_per_node: int = 4


def _sub(sec: dict[str, Any], key: str, known: set[str], path: str | None) -> dict[str, Any]:
    raw = sec.get(key) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: allocator.{key} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"config {path}: allocator.{key}.{unknown[0]} is not a known field; "
                          f"known: {', '.join(sorted(known))}")
    return raw


def load_allocator_config(path: str | None, args: argparse.Namespace) -> tuple[AllocatorConfig, dict[str, Any]]:
    cfg = load_config(path)
    sec = section(cfg, "allocator", source=f"config {path}")
    known = {"grpcAddress", "extenderAddress", "namespace", "leaseName", "leaseSeconds", "syncIntervalSeconds",
             "kubeconfig", "tls", "auth", "startBurstPerNode"}
    known |= {"extender"}  # allocator.extender.tls: hcs.allocator.extender.extender_tls_from_config
    unknown = sorted(set(sec) - known)
    if unknown:
        raise ConfigError(f"config {path}: allocator.{unknown[0]} is not a known field; "
                          f"known: {', '.join(sorted(known))}")
    tls = _sub(sec, "tls", {"certFile", "keyFile"}, path)
    auth = _sub(sec, "auth", {"audience", "nodeAgentUsers", "cacheTTLSeconds", "cacheSize"}, path)
    users = auth.get("nodeAgentUsers") or []
    if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
        raise ConfigError(f"config {path}: allocator.auth.nodeAgentUsers must be a list of user names, e.g. "
                          "[system:serviceaccount:hcs-system:hcs-node-agent]")
    try:
        out = AllocatorConfig(
            grpc_address=str(args.grpc_address or env_override("ALLOCATOR_GRPC_ADDRESS")
                             or sec.get("grpcAddress", AllocatorConfig.grpc_address)),
            extender_address=str(args.extender_address or sec.get("extenderAddress", AllocatorConfig.extender_address)),
            namespace=str(args.namespace or sec.get("namespace", AllocatorConfig.namespace)),
            lease_name=str(sec.get("leaseName", AllocatorConfig.lease_name)),
            lease_seconds=int(sec.get("leaseSeconds", AllocatorConfig.lease_seconds)),
            sync_interval_s=float(sec.get("syncIntervalSeconds", AllocatorConfig.sync_interval_s)),
            kubeconfig=args.kubeconfig or sec.get("kubeconfig") or env_override("KUBECONFIG_PATH"),
            tls_cert_file=str(tls.get("certFile") or ""),
            tls_key_file=str(tls.get("keyFile") or ""),
            auth_audience=str(auth.get("audience") or AllocatorConfig.auth_audience),
            node_agent_users=tuple(users),
            auth_cache_ttl_s=float(auth.get("cacheTTLSeconds", AllocatorConfig.auth_cache_ttl_s)),
            auth_cache_size=int(auth.get("cacheSize", AllocatorConfig.auth_cache_size)),
            start_burst_per_node=_whole(sec.get("startBurstPerNode", AllocatorConfig.start_burst_per_node),
                                        "startBurstPerNode"),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {path}: allocator section: {exc}") from exc
    if not 0 <= out.auth_cache_ttl_s <= 3600 or out.auth_cache_size < 1:
        raise ConfigError(f"config {path}: allocator.auth.cacheTTLSeconds must be 0..3600 and cacheSize >= 1")
    if out.lease_seconds < 3:
        raise ConfigError(f"config {path}: allocator.leaseSeconds must be >= 3, got {out.lease_seconds}")
    rates = section(cfg, "exchangeRates", source=f"config {path}")
    return out, rates


def _whole(value: Any, key: str) -> int:
    """A count >= 0 from the config (YAML ``8``, not ``8.5``, ``"8"`` or ``true``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"allocator.{key} must be a whole number >= 0, got {value!r}")
    return value


def _api_client(kubeconfig: str | None, *, retries: int | None = None) -> Any:
    """An API client of its own (its own connection pool); ``retries``: urllib3's retries per call (None: the
    client's default, which retries idempotent calls 3 times, each with the full timeout)."""
    cfg = _api_config(kubeconfig)
    if retries is not None:
        cfg.retries = retries
    from kubernetes import client

    return _pooled(client, cfg)


def _api_config(kubeconfig: str | None) -> Any:
    # lazy: the kubernetes client takes ~0.5 s to import; only commands that talk to the API server need it
    from kubernetes import client, config

    if kubeconfig or os.environ.get("KUBECONFIG"):
        path = kubeconfig or os.environ.get("KUBECONFIG")
        source = "--kubeconfig" if kubeconfig else "KUBECONFIG"
        if not os.path.isfile(str(path)):
            raise ConfigError(f"{source} {path}: no such file; pass the kubeconfig of your cluster "
                              "(e.g. ~/.kube/config)")
        try:
            cfg = client.Configuration()
            config.load_kube_config(config_file=path, client_configuration=cfg)  # type: ignore[no-untyped-call]
        except Exception as exc:  # noqa: BLE001 - the client raises yaml, OS, type and config errors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{source} {path}: not a usable kubeconfig ({first}); check it with "
                              f"`kubectl --kubeconfig {path} cluster-info`") from exc
        return cfg
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException as exc:
        raise ConfigError("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a pod") from exc
    return cfg


#: API server connections the daemon keeps: three watches hold one each for as long as they run, and the
#: extender's bind workers, the Lease, the sync and the leader label need theirs. The client's default
#: (5 x CPUs: 10 on two cores) ran out under load: every request beyond it opened a TLS connection and
#: threw it away ("Connection pool is full"), slowing binds and the Lease renewals with them.
API_POOL = 32


def _pooled(client: Any, cfg: Any) -> Any:
    cfg.connection_pool_maxsize = max(API_POOL, int(cfg.connection_pool_maxsize or 0))
    return client.ApiClient(cfg)


LEADER_LABEL = "hcs.io/allocator-leader"


def _freeze_after_sync(sync: Any, timeout_s: float = 24 * 3600) -> None:
    """Once every watch has listed, move what the daemon holds (inventory, watched objects) out of the cyclic
    garbage collector's reach (``gc.freeze``): its full collections then walk only what came since, instead
    of pausing an extender decision for tens of milliseconds at thousands of nodes. Objects freed by
    reference counting are freed as before."""
    import gc

    if sync.wait_synced(timeout_s):
        gc.collect()
        gc.freeze()
        log.info("initial state held: %d objects frozen out of the cyclic garbage collector", gc.get_freeze_count())


def _label_leader(rest: Any, is_leader: Callable[[], bool], period_s: float = 0.5) -> None:
    """Keep this pod's ``hcs.io/allocator-leader`` label equal to its leadership, so the chart's leader
    Service sends the kube-scheduler's extender calls and the node agents' gRPC to the active replica only
    (every replica stays Ready: rollouts and ``helm --wait`` see a standby as healthy). Off the cluster
    (no POD_NAME/POD_NAMESPACE in the environment) it does nothing."""
    name, namespace = os.environ.get("POD_NAME", ""), os.environ.get("POD_NAMESPACE", "")
    if not name or not namespace:
        return
    labelled: bool | None = None
    while True:
        leader = is_leader()
        if leader != labelled:
            body = {"metadata": {"labels": {LEADER_LABEL: "true" if leader else None}}}
            try:
                rest.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body,
                             content_type="application/merge-patch+json")
                labelled = leader
                log.info("pod %s/%s labelled %s=%s", namespace, name, LEADER_LABEL, leader)
            except KubeError as exc:
                log.warning("labelling pod %s/%s as %s: %s", namespace, name,
                            "leader" if leader else "standby", exc)
        time.sleep(period_s)


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    try:
        return host or "0.0.0.0", int(port)
    except ValueError:
        raise ConfigError(f"extender address {address!r}: expected HOST:PORT, e.g. 0.0.0.0:8888") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("allocator", help="run the central allocator (gRPC API + scheduler extender)",
                              description="Run the central allocator: reservations and placement over the "
                              "cluster's ComputeNodes, its gRPC API, and the kube-scheduler extender (HTTP).")
    p.add_argument("--config", default=env_override("CONFIG"), help="YAML config (section 'allocator')")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--grpc-address", default=None, help="unix:///path or HOST:PORT")
    p.add_argument("--extender-address", default=None, help="HOST:PORT for the scheduler extender")
    p.add_argument("--namespace", default=None, help="namespace of the leader-election Lease")
    p.add_argument("--identity", default=None, help="leader-election identity (default hostname_pid)")
    p.add_argument("--insecure-dev", action="store_true",
                   help="DEVELOPMENT ONLY: serve the gRPC API (and the extender) in plaintext and accept "
                        "callers without any identity; logs a warning. Never in a cluster")
    p.add_argument("--print-scheduler-config", action="store_true",
                   help="print the KubeSchedulerConfiguration for the hcs-scheduler profile and exit")
    p.add_argument("--extender-url", default=None, help="with --print-scheduler-config: the extender URL")
    # lazy: `hcs <command> --help` and the other commands start without loading this stack
    from hcs.allocator.extender import add_extender_args

    add_extender_args(p)
    p.set_defaults(func=run_allocator)

    a = subparsers.add_parser("alloc", help="allocator client commands")
    sub = a.add_subparsers(dest="alloc_command", metavar="ACTION")
    e = sub.add_parser("explain", help="why a pod fits or not, per node")
    e.add_argument("pod", help="POD or NAMESPACE/POD")
    e.add_argument("-n", "--namespace", default="default")
    e.add_argument("--allocator", default=env_override("ALLOCATOR_ADDRESS"),
                   help="allocator gRPC address (env HCS_ALLOCATOR_ADDRESS); without it, compute locally "
                        "from the API server")
    e.add_argument("--token-file", default=env_override("ALLOCATOR_TOKEN_FILE"),
                   help="file holding a bearer token for the allocator's audience (env HCS_ALLOCATOR_TOKEN_FILE), "
                        "e.g. from `kubectl create token SA --audience hcs-allocator`")
    e.add_argument("--ca-file", default=env_override("ALLOCATOR_CA_FILE"),
                   help="CA certificate that signed the allocator's TLS certificate (env HCS_ALLOCATOR_CA_FILE)")
    e.add_argument("--kubeconfig", default=None)
    e.add_argument("--output", choices=("table", "json"), default="table")
    e.set_defaults(func=run_explain)
    a.set_defaults(func=lambda args: (a.print_help(), 2)[1])


def run_allocator(args: argparse.Namespace) -> int:
    # lazy: `hcs <command> --help` and the other commands start without loading this stack
    from hcs.allocator.auth import KubeAuthorizer, server_credentials
    from hcs.allocator.extender import SCHEDULER_CONFIG, Extender, extender_tls_from_config, serve_http
    from hcs.allocator.kube import KubeSync, LeaderElector, Persister
    from hcs.allocator.metrics import AllocatorMetrics
    from hcs.allocator.service import AllocatorService, serve
    from hcs.allocator.state import AllocatorState
    from hcs.cluster_inventory import ExchangeRates

    if args.print_scheduler_config:
        text = SCHEDULER_CONFIG.read_text()
        if args.extender_url:
            text = text.replace("https://hcs-allocator.hcs-system.svc:8888", args.extender_url)
        print(text, end="")
        return 0
    cfg, rates_cfg = load_allocator_config(args.config, args)
    insecure_dev = bool(getattr(args, "insecure_dev", False))
    rates = ExchangeRates.from_config(rates_cfg)
    if args.insecure_dev:
        log.warning("--insecure-dev: the allocator's gRPC API is served WITHOUT TLS and WITHOUT caller "
                    "authentication: anyone who reaches %s can read, reserve and release any pod's devices. "
                    "Development only; never run this in a cluster", cfg.grpc_address)
        credentials = None
    else:
        credentials = server_credentials(cfg.grpc_address, cfg.tls_cert_file, cfg.tls_key_file)
    # after the gRPC API's transport (the primary API), the extender's: both refuse plaintext without the flag
    extender_tls = extender_tls_from_config(
        section(load_config(args.config), "allocator", source=f"config {args.config}").get("extender"),
        insecure_dev=insecure_dev, source=f"config {args.config}")
    rest = KubeRest(_api_client(cfg.kubeconfig))
    stop = StopSignals()
    state = AllocatorState(start_burst=cfg.start_burst_per_node)
    metrics = AllocatorMetrics(state)
    sync = KubeSync(rest, state, rates, metrics)
    identity = args.identity or f"{socket.gethostname()}_{os.getpid()}"
    # the Lease gets its own API client (connection pool): binds, relists and adoption never delay a renewal;
    # no hidden retries, so each renewal call is bounded by the elector's timeout (it retries itself)
    elector = LeaderElector(KubeRest(_api_client(cfg.kubeconfig, retries=0)), cfg.namespace, cfg.lease_name,
                            identity, cfg.lease_seconds)

    def serving() -> bool:
        """Leader with every watch listed once: only then may it place pods (a standby's /readyz is 503)."""
        return elector.is_leader() and sync.synced()

    def adopt() -> None:
        try:
            n = sync.adopt()
            if n:
                log.info("labelled %d pod(s) annotated or gated before hcs.io/allocator existed", n)
            sync.reconcile()
            log.info("leader: %d reservations from the watched pods", len(state.reservations()))
        except HcsError as exc:
            log.warning("adopting unlabelled pods after election failed: %s", exc)
        except Exception:
            log.exception("adopting unlabelled pods after election failed")

    # the standby keeps its watches (a hot state): on election it is ready as soon as it holds the Lease
    elector.on_elected = lambda: threading.Thread(target=adopt, name="hcs-adopt", daemon=True).start()
    auth = None if args.insecure_dev else KubeAuthorizer(
        rest, audience=cfg.auth_audience, node_agent_users=cfg.node_agent_users, ttl_s=cfg.auth_cache_ttl_s,
        cache_size=cfg.auth_cache_size)
    service = AllocatorService(state, Persister(sync), sync.resolve, serving, auth=auth)
    if cfg.grpc_address.startswith("unix://"):
        os.makedirs(os.path.dirname(cfg.grpc_address[len("unix://"):]) or ".", exist_ok=True)
    grpc_server = serve(service, cfg.grpc_address, credentials=credentials, interceptors=(metrics.grpc_interceptor(),))
    host, port = _split_host_port(cfg.extender_address)
    http_server = serve_http(Extender(state, sync, serving, metrics), host, port, tls=extender_tls,
                             insecure_dev=insecure_dev)
    threading.Thread(target=sync.run, args=(cfg.sync_interval_s, serving), name="hcs-sync", daemon=True).start()
    threading.Thread(target=elector.run, name="hcs-lease", daemon=True).start()
    threading.Thread(target=_freeze_after_sync, args=(sync,), name="hcs-gc-freeze", daemon=True).start()
    threading.Thread(target=_label_leader, args=(rest, elector.is_leader), name="hcs-leader-label",
                     daemon=True).start()
    log.info("allocator %s: gRPC %s (%s), extender %s://%s:%d", identity, cfg.grpc_address,
             "INSECURE, no caller authentication" if auth is None else
             f"{'local' if cfg.grpc_address.startswith('unix:') else 'TLS'}, tokens for audience "
             f"{cfg.auth_audience!r}, {len(cfg.node_agent_users)} node-agent identities",
             "http" if extender_tls is None else "https", host, port)
    stop.wait(stop_timeout_s=20)
    log.info("shutting down")
    sync.stop()
    elector.release()
    http_server.shutdown()
    grpc_server.stop(2)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    # lazy: `hcs <command> --help` and the other commands start without loading this stack
    import grpc

    from hcs.allocator.service import verdict_to_proto
    from hcs.api.gen.hcs.allocator.v1 import allocator_pb2 as pb
    from hcs.api.gen.hcs.allocator.v1 import allocator_pb2_grpc as pbg

    ns, _, name = args.pod.rpartition("/")
    ns = ns or args.namespace
    if args.allocator:
        # lazy: only with --allocator
        from hcs.allocator_client import channel as allocator_channel

        channel = allocator_channel(args.allocator, token_file=args.token_file or "", ca_file=args.ca_file or "")
        try:
            resp = pbg.AllocatorStub(channel).Explain(  # type: ignore[no-untyped-call]
                pb.ExplainRequest(pod=pb.PodRef(namespace=ns, name=name)), timeout=30)
        except grpc.RpcError as exc:
            raise HcsError(f"allocator {args.allocator}: {exc.code().name}: {exc.details()}") from exc
        finally:
            channel.close()
        verdicts, summary = list(resp.verdicts), resp.summary
    else:
        # lazy: only without --allocator
        from hcs.allocator.kube import KubeSync
        from hcs.allocator.placement import demand_from_pod
        from hcs.allocator.state import AllocatorState

        state = AllocatorState()
        sync = KubeSync(KubeRest(_api_client(args.kubeconfig)), state)
        try:
            sync.sync_inventory()
            sync.resync()
            pod = sync.find_pod("", ns, name)
        except KubeError as exc:
            raise HcsError(f"API server: {exc}") from exc
        if pod is None:
            raise HcsError(f"pod {ns}/{name} not found; check the name and namespace (-n)")
        demand = demand_from_pod(pod)
        if demand is None:
            print(f"pod {ns}/{name} asks for no ai.compute resources: every node fits as far as HCS is concerned")
            return 0
        held = state.reservation(demand.pod.uid)
        if held is not None:
            state.release(demand.pod.uid)  # explain as if placing it afresh
        verdicts = [verdict_to_proto(v) for v in state.explain(demand)]
        summary = f"{sum(1 for v in verdicts if v.fits)} of {len(verdicts)} nodes fit"
        if held is not None:
            summary += f"; pod holds devices on {held.node} ({held.state})"
    if args.output == "json":
        # lazy: only for -o json
        from google.protobuf import json_format

        print(json.dumps({"summary": summary, "verdicts": [json_format.MessageToDict(v) for v in verdicts]}))
        return 0
    print(f"pod {ns}/{name}: {summary}")
    print(f"{'NODE':<28} {'FITS':<5} {'SCORE':>6}  REASON / PROPOSAL")
    for v in verdicts:
        detail = v.reason
        if v.fits and v.proposal:
            detail = "; ".join(f"{c.container}: " + ", ".join(f"{d.vendor}-{d.index} {d.vram_bytes / 2**30:g}Gi"
                                                               for d in c.devices) for c in v.proposal)
        print(f"{v.node:<28} {'yes' if v.fits else 'no':<5} {v.score:>6.1f}  {detail}")
    return 0
