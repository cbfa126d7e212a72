"""``hcs migrate`` and ``hcs checkpoint``: checkpoint recovery from the command line (docs/checkpoint.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hcs.errors import ConfigError


def _cluster_description(path: str | None) -> dict[str, Any]:
    """The node access description: --cluster-json FILE, $HCS_CHECKPOINT_CLUSTER, else the local checkpoint
    cluster's (``python3 e2e/checkpoint/cluster.py env --json``)."""
    path = path or os.environ.get("HCS_CHECKPOINT_CLUSTER")
    if path:
        try:
            data: dict[str, Any] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--cluster-json {path}: {e}") from e
        return data
    script = Path(__file__).resolve().parents[2] / "e2e" / "checkpoint" / "cluster.py"
    if not script.exists():
        raise ConfigError("no node description: pass --cluster-json FILE (nodes: kubelet URL, checkpoint dir, "
                          "containerd socket) or set HCS_CHECKPOINT_CLUSTER")
    r = subprocess.run([sys.executable, str(script), "env", "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise ConfigError(f"{script} env --json failed: {r.stderr.strip()}")
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def build(args: argparse.Namespace) -> Any:
    from kubernetes import config as kconfig
    from kubernetes.client import ApiClient  # noqa: F401  (the type of the client below)

    from hcs.checkpoint.migrate import Cluster, Migrator, Store
    from hcs.kube import KubeRest

    desc = _cluster_description(args.cluster_json)
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or desc.get("kubeconfig")
    api: ApiClient = kconfig.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    cluster = Cluster.from_description(KubeRest(api, timeout_s=30), desc)
    store = Store(Path(args.store or os.environ.get("HCS_CHECKPOINT_STORE")
                       or Path.home() / ".cache" / "hcs" / "checkpoint" / "store"))
    return Migrator(cluster, store)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", default=None, help="default $KUBECONFIG, else the checkpoint cluster's")
    p.add_argument("--cluster-json", default=None, metavar="FILE",
                   help="node access description (default $HCS_CHECKPOINT_CLUSTER, else the local checkpoint "
                   "cluster: e2e/checkpoint/cluster.py env --json)")
    p.add_argument("--store", default=None, help="checkpoint store dir (default $HCS_CHECKPOINT_STORE or "
                   "~/.cache/hcs/checkpoint/store)")


def _pod_ref(text: str, namespace: str) -> tuple[str, str]:
    if "/" in text:
        ns, name = text.split("/", 1)
        return ns, name
    return namespace, text


def cmd_migrate(args: argparse.Namespace) -> int:
    from hcs.checkpoint.migrate import CheckpointError

    m = build(args)
    ns, name = _pod_ref(args.pod, args.namespace)
    try:
        res = m.migrate(ns, name, to_node=args.to, reason="hcs migrate")
    except CheckpointError as e:
        print(f"hcs migrate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res.as_dict(), indent=1))
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    from hcs.checkpoint.controller import Controller

    ctl = Controller(build(args), period_s=args.period, namespace=args.namespace)
    with contextlib.suppress(KeyboardInterrupt):
        ctl.run()
    return 0


def cmd_verdict(args: argparse.Namespace) -> int:
    from hcs.checkpoint.controller import inject_verdict

    m = build(args)
    print(json.dumps(inject_verdict(m.c.kube, args.node, args.device, args.verdict)))
    return 0


def cmd_defrag(args: argparse.Namespace) -> int:
    from hcs.checkpoint import defrag

    m = build(args)
    moves = defrag.plan(defrag.read_state(m), max_moves=args.max_moves)
    if args.apply:
        out = defrag.apply(m, moves)
        print(json.dumps({"applied": out}, indent=1))
        return 0 if all("skipped" not in o for o in out) else 1
    print(json.dumps({"dry_run": [mv.as_dict() for mv in moves]}, indent=1))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "migrate", help="checkpoint a pod and restore it on another device/node (CRIU)",
        description="Checkpoint POD's container through its kubelet (containerd + CRIU), delete it, and restore "
        "it as a new pod on a free healthy device of --to NODE (default: another node if one has room). The "
        "pod must opt in with the annotation hcs.io/checkpoint: auto or manual.")
    p.add_argument("pod", metavar="POD", help="pod name or NAMESPACE/NAME")
    p.add_argument("--to", metavar="NODE", default=None, help="target node")
    p.add_argument("-n", "--namespace", default="default")
    _common(p)
    p.set_defaults(func=cmd_migrate)

    d = subparsers.add_parser(
        "defrag", help="move checkpointable pods so whole devices come free (dry run or apply)",
        description="Plan moves of opted-in pods (hcs.io/checkpoint auto|manual) that lower the allocator's "
        "fragmentation measure (FGD, whole-device requests of 1/2/4/8), greedily; --apply performs them one "
        "at a time with hcs migrate, re-checking each target's free device first (never over-committing).")
    mode = d.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print the planned moves")
    mode.add_argument("--apply", action="store_true", help="perform them, one at a time")
    d.add_argument("--max-moves", type=int, default=8)
    _common(d)
    d.set_defaults(func=cmd_defrag)

    c = subparsers.add_parser("checkpoint", help="checkpoint controller and device-verdict injection",
                              description="Periodic checkpoints and automatic moves of hcs.io/checkpoint: auto "
                              "pods (device verdicts, node drain).")
    sub = c.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    run = sub.add_parser("controller", help="run the checkpoint controller (until interrupted)")
    run.add_argument("--period", type=float, default=1.0, help="seconds between passes (default 1)")
    run.add_argument("-n", "--namespace", default=None, help="only this namespace (default all)")
    _common(run)
    run.set_defaults(func=cmd_controller)
    v = sub.add_parser("verdict", help="record a device verdict on a node (what sub-health reports)")
    v.add_argument("node")
    v.add_argument("device", help="device UUID")
    v.add_argument("verdict", choices=("healthy", "suspect", "failing", "failed"))
    _common(v)
    v.set_defaults(func=cmd_verdict)
