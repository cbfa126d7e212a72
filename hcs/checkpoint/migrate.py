"""Checkpoint a pod's container through its node's kubelet and restore it as a new pod on another device.

The flow (docs/checkpoint.md):

1. ``POST https://<node>:<kubelet port>/checkpoint/<ns>/<pod>/<container>``: containerd + CRIU dump the
   process tree (device memory of the simulated runtimes is host memory, so it is in the dump) and the
   kubelet writes an archive under ``/var/lib/kubelet/checkpoints`` on that node. The container keeps
   running (the Kubernetes API is "forensic" checkpointing).
2. The archive is moved into the checkpoint store (a node-local directory of the controller's host, see
   :class:`Store`) and turned into an OCI checkpoint image (:mod:`hcs.checkpoint.image`).
3. The old pod is deleted at once (grace 0): from here on only the archive holds the workload, so it never
   runs twice (stop-and-copy; the pause is checkpoint + restore).
4. The image is imported into the target node's containerd (``k8s.io`` namespace) and a replacement pod
   with the same spec, the checkpoint image, a fresh device (``hcs.io/device``) and the target node is
   created; containerd 2.3's CRI restores the process instead of starting it. It is ``Running`` when the
   restored process runs.

The node-side steps (reading the kubelet's archive, ``ctr images import``) need the node's filesystem and
containerd socket: :class:`NodeAccess` says where they are. On the local checkpoint cluster every node is a
mount namespace of this host (e2e/checkpoint/cluster.py writes the description); on real nodes the node
agent would run them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcs.checkpoint import capability, image
from hcs.errors import HcsError
from hcs.kube import KubeError, KubeRest

log = logging.getLogger(__name__)

ANN_MODE = "hcs.io/checkpoint"  # auto | manual | never (default never)
ANN_INTERVAL = "hcs.io/checkpoint-interval"  # e.g. 30s, 5m
ANN_DEVICE = "hcs.io/device"  # the device UUID the pod is assigned (the workload reads it through the downward API)
ANN_RESTORED_FROM = "hcs.io/restored-from"
ANN_MIGRATIONS = "hcs.io/migrations"
ANN_LAST_CHECKPOINT = "hcs.io/last-checkpoint"
NODE_ANN_VERDICTS = "hcs.io/device-verdicts"  # node annotation: JSON {uuid: healthy|suspect|failing|failed}
LABEL_CAPABLE = "hcs.io/checkpoint-capable"
MODES = ("auto", "manual", "never")
BAD_VERDICTS = ("failing", "failed")


class CheckpointError(HcsError):
    """A checkpoint or restore step failed; the message names the step, the pod and what to do."""


@dataclass(frozen=True)
class NodeAccess:
    """How the controller reaches one node's kubelet, checkpoint directory and containerd."""

    name: str
    kubelet_url: str  # https://host:port
    checkpoint_dir: Path  # the node's /var/lib/kubelet/checkpoints as seen from here
    containerd_socket: Path
    ctr: Path
    profile: Path | None = None  # simulated node profile (driver/profiles/*.json): the device UUIDs
    simulated: bool = True  # simulated runtimes (device memory = host memory); real nodes: False
    # containerd's content store (<root>/io.containerd.content.v1.content) as seen from here: when the archive
    # is on the same filesystem, it enters the store by hard link instead of a copy through `ctr import`
    content_dir: Path | None = None

    def vendor_of(self, uuid: str) -> str:
        if self.profile is None:
            return ""
        for d in json.loads(self.profile.read_text()).get("devices", []):
            if d.get("uuid") == uuid:
                return str(d.get("vendor", ""))
        return ""

    def devices(self) -> list[str]:
        if self.profile is None:
            return []
        data = json.loads(self.profile.read_text())
        return [str(d["uuid"]) for d in data.get("devices", [])]


@dataclass
class Cluster:
    """The API server plus every node the controller can checkpoint on or restore to."""

    kube: KubeRest
    nodes: dict[str, NodeAccess]
    client_cert: Path  # a client certificate the kubelets accept for nodes/checkpoint
    client_key: Path
    ssl_ctx: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        # The kubelets serve self-signed certificates (as the API server's own kubelet client accepts by
        # default when no --kubelet-certificate-authority is set); the client certificate authenticates us.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        self.ssl_ctx = ctx

    @classmethod
    def from_description(cls, kube: KubeRest, desc: Mapping[str, Any]) -> Cluster:
        """From ``e2e/checkpoint/cluster.py env --json`` (or a file of the same shape)."""
        nodes = {}
        repo = Path(__file__).resolve().parents[2]
        for name, n in desc["nodes"].items():
            state = Path(n["state"])
            prof = repo / "driver" / "profiles" / f"{n['profile']}.json" if n.get("profile") else None
            nodes[name] = NodeAccess(
                name=name, kubelet_url=n["kubelet"],
                checkpoint_dir=Path(n.get("checkpoint_dir") or state / "root" / "var-lib-kubelet" / "checkpoints"),
                containerd_socket=Path(n["containerd_socket"]), ctr=Path(desc["nodebin"]) / "ctr",
                profile=prof if prof is not None and prof.exists() else None,
                content_dir=Path(n["content_dir"]) if n.get("content_dir") else None)
        pki = Path(desc["pki"])
        return cls(kube=kube, nodes=nodes, client_cert=pki / "admin.crt", client_key=pki / "admin.key")


@dataclass
class Store:
    """Checkpoint archives, per pod, in a directory of the controller's host.

    Node-local on purpose: the local cluster has no storage provisioner for a PVC, archives are as large as
    the workload's memory (1 GiB of VRAM -> ~1 GiB), and the archive must outlive the source device, not the
    source node. A real deployment that must survive node loss points this at shared storage (NFS/PVC).
    Keeps the newest ``keep`` archives per pod.
    """

    root: Path
    keep: int = 2

    def pod_dir(self, ns: str, pod: str) -> Path:
        d = self.root / ns / pod
        d.mkdir(parents=True, exist_ok=True)
        return d

    def latest(self, ns: str, pod: str) -> Path | None:
        d = self.root / ns / pod
        archives = sorted(d.glob("*.ckpt.tar")) if d.is_dir() else []
        return archives[-1] if archives else None

    def prune(self, ns: str, pod: str) -> None:
        d = self.root / ns / pod
        archives = sorted(d.glob("*.ckpt.tar"))
        for old in archives[:-self.keep] if self.keep > 0 else archives:
            old.unlink(missing_ok=True)
        for img in d.glob("*.oci.tar"):
            img.unlink(missing_ok=True)


@dataclass(frozen=True)
class CheckpointResult:
    archive: Path
    seconds: float
    size: int


@dataclass(frozen=True)
class MigrationResult:
    old_pod: str
    new_pod: str
    node: str
    device: str
    checkpoint_s: float
    restore_s: float
    pause_s: float  # old pod frozen by the checkpoint -> new pod Running
    archive_bytes: int
    from_periodic: bool  # restored from an earlier periodic checkpoint (the old pod was gone)
    import_s: float = 0.0  # part of restore_s: image streamed into the target node's containerd

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def parse_interval(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text or "")
    if not m:
        raise CheckpointError(f"{ANN_INTERVAL}={text!r}: expected a duration like 30s, 5m or 1h")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if value < 1:
        raise CheckpointError(f"{ANN_INTERVAL}={text!r}: at least 1s")
    return value


def mode_of(pod: Mapping[str, Any]) -> str:
    raw = str((pod.get("metadata", {}).get("annotations") or {}).get(ANN_MODE, "never")).strip().lower()
    return raw if raw in MODES else "never"


def _base_name(name: str) -> str:
    return re.sub(r"-m\d+$", "", name)


class Migrator:
    def __init__(self, cluster: Cluster, store: Store, *, checkpoint_timeout_s: int = 120,
                 restore_timeout_s: float = 120.0) -> None:
        self.c = cluster
        self.store = store
        self.checkpoint_timeout_s = checkpoint_timeout_s
        self.restore_timeout_s = restore_timeout_s
        self.last_import_s = 0.0  # of the last restore: checkpoint image streamed into the target's containerd

    # ------------------------------------------------------------ API helpers
    def pod(self, ns: str, name: str) -> dict[str, Any]:
        try:
            return self.c.kube.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        except KubeError as e:
            raise CheckpointError(f"pod {ns}/{name}: {e}") from e

    def event(self, pod: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        md = pod["metadata"]
        ns = md["namespace"]
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{md['name']}.hcs-", "namespace": ns},
                "involvedObject": {"kind": "Pod", "namespace": ns, "name": md["name"], "uid": md.get("uid", ""),
                                   "apiVersion": "v1"},
                "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
                "source": {"component": "hcs-checkpoint"}, "count": 1,
                "firstTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "lastTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.c.kube.request("POST", f"/api/v1/namespaces/{ns}/events", body=body)
        except KubeError as e:  # an event is best effort; the action's own result is what counts
            log.warning("event %s on %s/%s not recorded: %s", reason, ns, md["name"], e)

    def node_verdicts(self, node: str) -> dict[str, str]:
        try:
            obj = self.c.kube.request("GET", f"/api/v1/nodes/{node}")
        except KubeError:
            return {}
        raw = (obj["metadata"].get("annotations") or {}).get(NODE_ANN_VERDICTS, "")
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            log.warning("node %s: %s is not JSON; ignored", node, NODE_ANN_VERDICTS)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    # ------------------------------------------------------------ checkpoint
    def checkpoint(self, pod: Mapping[str, Any]) -> CheckpointResult:
        """Checkpoint the pod's (single) container; the archive lands in the store."""
        md, spec = pod["metadata"], pod["spec"]
        ns, name = md["namespace"], md["name"]
        node = spec.get("nodeName") or ""
        if node not in self.c.nodes:
            raise CheckpointError(f"pod {ns}/{name} runs on {node or 'no node'}, which has no checkpoint support "
                                  f"here (known: {', '.join(sorted(self.c.nodes))})")
        containers = spec.get("containers") or []
        if len(containers) != 1:
            raise CheckpointError(f"pod {ns}/{name} has {len(containers)} containers; checkpoint migration handles "
                                  "single-container pods")
        access = self.c.nodes[node]
        cname = containers[0]["name"]
        url = (f"{access.kubelet_url}/checkpoint/{urllib.parse.quote(ns)}/{urllib.parse.quote(name)}/"
               f"{urllib.parse.quote(cname)}?timeout={self.checkpoint_timeout_s}")
        t0 = time.monotonic()
        req = urllib.request.Request(url, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.checkpoint_timeout_s + 30, context=self.c.ssl_ctx) as r:
                items = json.loads(r.read()).get("items") or []
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")[:800]
            raise CheckpointError(f"kubelet on {node} refused the checkpoint of {ns}/{name}/{cname}: HTTP "
                                  f"{e.code}: {body}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise CheckpointError(f"kubelet on {node} ({access.kubelet_url}) unreachable for the checkpoint of "
                                  f"{ns}/{name}: {e}") from e
        seconds = time.monotonic() - t0
        if not items:
            raise CheckpointError(f"kubelet on {node} returned no checkpoint archive for {ns}/{name}")
        src = access.checkpoint_dir / Path(str(items[0])).name
        dst = self.store.pod_dir(ns, name) / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-" \
                                              f"{int(time.time() * 1000) % 1000:03d}.ckpt.tar"
        try:
            shutil.move(str(src), str(dst))
        except OSError as e:
            raise CheckpointError(f"moving the archive {src} of {ns}/{name} into the store: {e}") from e
        self.store.prune(ns, name)
        return CheckpointResult(archive=dst, seconds=seconds, size=dst.stat().st_size)

    # ------------------------------------------------------------ placement
    def used_devices(self, node: str, exclude_uid: str = "") -> set[str]:
        pods = self.c.kube.request("GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={node}"})
        used = set()
        for p in pods.get("items", []):
            if p["metadata"].get("uid") == exclude_uid or p.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            dev = (p["metadata"].get("annotations") or {}).get(ANN_DEVICE)
            if dev:
                used.add(dev)
        return used

    def node_ok(self, node: str) -> bool:
        try:
            obj = self.c.kube.request("GET", f"/api/v1/nodes/{node}")
        except KubeError:
            return False
        if obj.get("spec", {}).get("unschedulable"):
            return False
        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        return conds.get("Ready") == "True"

    def pick_target(self, pod: Mapping[str, Any], to_node: str | None) -> tuple[str, str]:
        """(node, device UUID): a free, healthy device; another node first, unless ``to_node`` says."""
        src = pod["spec"].get("nodeName") or ""
        uid = pod["metadata"].get("uid", "")
        candidates: Iterable[str]
        if to_node:
            if to_node not in self.c.nodes:
                raise CheckpointError(f"--to {to_node}: not a checkpoint-capable node (known: "
                                      f"{', '.join(sorted(self.c.nodes))})")
            candidates = [to_node]
        else:
            candidates = sorted(self.c.nodes, key=lambda n: (n == src, n))
        reasons = []
        for node in candidates:
            if not self.node_ok(node):
                reasons.append(f"{node}: not Ready or cordoned")
                continue
            bad = {u for u, v in self.node_verdicts(node).items() if v in BAD_VERDICTS}
            used = self.used_devices(node, exclude_uid=uid)
            free = [d for d in self.c.nodes[node].devices() if d not in bad and d not in used]
            if free:
                return node, free[0]
            reasons.append(f"{node}: no free healthy device ({len(used)} used, {len(bad)} failing)")
        raise CheckpointError(f"no target for {pod['metadata']['namespace']}/{pod['metadata']['name']}: "
                              + "; ".join(reasons))

    # ------------------------------------------------------------ restore
    def _ctr(self, access: NodeAccess, *args: str) -> list[str]:
        return [str(access.ctr), "--address", str(access.containerd_socket), "-n", "k8s.io", *args]

    def link_blob(self, node: str, archive: Path, info: image.ArchiveInfo) -> bool:
        """Put the archive into the node's content store as the layer blob without copying it: a hard link
        named by its digest in the store's blob directory, then registered in the ``k8s.io`` namespace
        (``ctr content ingest`` with the expected digest and size: containerd's shared-content path adds
        the record without reading data). False when that cannot be done (no content dir known, another
        filesystem): the caller streams the archive instead. containerd re-hashes the layer when it
        unpacks it, so a wrong name cannot slip through."""
        access = self.c.nodes[node]
        if access.content_dir is None:
            return False
        algo, hexd = info.digest.split(":", 1)
        blob_dir = access.content_dir / "blobs" / algo
        blob = blob_dir / hexd
        try:
            blob_dir.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                tmp = access.content_dir / f".hcs-link-{hexd}"  # same filesystem; outside blobs/ and ingest/
                tmp.unlink(missing_ok=True)
                tmp.hardlink_to(archive)
                tmp.replace(blob)  # atomic: the store never sees a partial name
        except OSError as e:
            log.info("checkpoint archive %s cannot be linked into %s's content store (%s); streaming it", archive,
                     node, e)
            return False
        if blob.stat().st_size != info.size:
            return False
        # ctr seeks its input to the size the store already holds and reads nothing more: a sparse file of
        # that size (no data, no disk) stands for it
        with tempfile.TemporaryFile() as hole:
            hole.truncate(info.size)
            r = subprocess.run(self._ctr(access, "content", "ingest", "--expected-size", str(info.size),
                                         "--expected-digest", info.digest, f"hcs-ckpt-{hexd[:16]}"),
                               stdin=hole, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            log.warning("registering the linked checkpoint blob in %s's containerd failed (%s); streaming it",
                        node, r.stderr.strip()[-300:])
            return False
        return True

    def import_image(self, node: str, archive: Path, ref: str) -> None:
        """Make the checkpoint image ``ref`` known to the node's containerd: the layer linked into its content
        store when possible (:meth:`link_blob`) and only the image's index, manifest and config streamed to
        ``ctr images import -``; otherwise the whole image streamed."""
        access = self.c.nodes[node]
        info = image.inspect_archive(archive)
        linked = self.link_blob(node, archive, info)
        with tempfile.TemporaryFile() as errf:
            p = subprocess.Popen(self._ctr(access, "images", "import", "--snapshotter", "overlayfs", "-"),
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf)
            assert p.stdin is not None
            try:
                with p.stdin:
                    image.stream_image(archive, p.stdin, ref, info, include_layer=not linked)
                rc = p.wait(timeout=600)
            except (OSError, subprocess.TimeoutExpired, image.CheckpointImageError) as e:
                p.kill()
                p.wait()
                errf.seek(0)
                raise CheckpointError(f"streaming checkpoint image {ref} into {node}'s containerd: {e}; ctr: "
                                      f"{errf.read().decode(errors='replace').strip()[-400:]}") from e
            errf.seek(0)
            err = errf.read().decode(errors="replace")
        if rc != 0:
            raise CheckpointError(f"importing checkpoint image {ref} into {node}'s containerd failed"
                                  f"{' (layer linked into its content store)' if linked else ''}: "
                                  f"{err.strip()[-600:]}")

    def remove_image(self, node: str, ref: str) -> None:
        access = self.c.nodes[node]
        subprocess.run(self._ctr(access, "images", "rm", ref), capture_output=True, text=True, timeout=60)

    def replacement(self, pod: Mapping[str, Any], node: str, device: str, ref: str, archive: Path) -> dict[str, Any]:
        md = pod["metadata"]
        ann = dict(md.get("annotations") or {})
        n = int(ann.get(ANN_MIGRATIONS, "0") or 0) + 1
        ann.update({ANN_DEVICE: device, ANN_MIGRATIONS: str(n),
                    ANN_RESTORED_FROM: f"{md['name']}@{md.get('uid', '')}:{archive.name}"})
        ann.pop(ANN_LAST_CHECKPOINT, None)
        spec = json.loads(json.dumps(pod["spec"]))
        for key in ("nodeName",):
            spec.pop(key, None)
        spec["nodeSelector"] = dict(spec.get("nodeSelector") or {}, **{"kubernetes.io/hostname": node})
        c0 = spec["containers"][0]
        c0["image"] = ref
        c0["imagePullPolicy"] = "Never"
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{_base_name(md['name'])}-m{n}", "namespace": md["namespace"],
                             "labels": dict(md.get("labels") or {}), "annotations": ann},
                "spec": spec}

    def wait_running(self, ns: str, name: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            p = self.pod(ns, name)
            st = p.get("status", {})
            cs = (st.get("containerStatuses") or [{}])[0]
            if st.get("phase") == "Running" and cs.get("state", {}).get("running"):
                return p
            waiting = cs.get("state", {}).get("waiting") or {}
            last = f"{st.get('phase')} {waiting.get('reason', '')} {waiting.get('message', '')}".strip()
            if waiting.get("reason") in ("CreateContainerError", "ErrImageNeverPull", "InvalidImageName") and \
                    time.monotonic() > deadline - timeout_s + 20:
                break
            time.sleep(0.2)
        raise CheckpointError(f"restored pod {ns}/{name} not Running after {timeout_s:.0f} s: {last}")

    def delete_pod(self, ns: str, name: str) -> None:
        try:
            self.c.kube.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}",
                                body={"gracePeriodSeconds": 0})
        except KubeError as e:
            if e.status != 404:
                raise CheckpointError(f"deleting pod {ns}/{name}: {e}") from e

    def restore(self, pod: Mapping[str, Any], archive: Path, node: str, device: str) -> tuple[dict[str, Any], float]:
        md = pod["metadata"]
        ns = md["namespace"]
        t0 = time.monotonic()
        tag = archive.name.split(".")[0].lower()
        ref = f"hcs.local/checkpoint/{ns}-{_base_name(md['name'])}:{tag}"
        self.import_image(node, archive, ref)
        self.last_import_s = time.monotonic() - t0
        body = self.replacement(pod, node, device, ref, archive)
        try:
            self.c.kube.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)
        except KubeError as e:
            raise CheckpointError(f"creating the restored pod {ns}/{body['metadata']['name']}: {e}") from e
        try:
            new = self.wait_running(ns, body["metadata"]["name"], self.restore_timeout_s)
        except CheckpointError:
            self.delete_pod(ns, body["metadata"]["name"])
            raise
        self.remove_image(node, ref)  # the running container's rootfs is its base image + the restored diff
        return new, time.monotonic() - t0

    # ------------------------------------------------------------ the whole move
    def migrate(self, ns: str, name: str, *, to_node: str | None = None, reason: str = "manual",
                allow_periodic: bool = True) -> MigrationResult:
        pod = self.pod(ns, name)
        mode = mode_of(pod)
        if mode == "never":
            raise CheckpointError(f"pod {ns}/{name} has {ANN_MODE}={mode} (or none): not checkpointed; set "
                                  f"{ANN_MODE}: auto or manual to opt in")
        if pod["metadata"].get("ownerReferences"):
            raise CheckpointError(f"pod {ns}/{name} is owned by "
                                  f"{pod['metadata']['ownerReferences'][0].get('kind')}: its controller would start "
                                  "a fresh copy beside the restored one; checkpoint migration handles bare pods")
        src = pod["spec"].get("nodeName") or ""
        src_access = self.c.nodes.get(src)
        if src_access is not None:
            dev = (pod["metadata"].get("annotations") or {}).get(ANN_DEVICE, "")
            support = capability.device_support(src_access.vendor_of(dev), simulated=src_access.simulated)
            if not support.ok:
                self.event(pod, "CheckpointUnsupported", f"{reason}: {support.reason}", warning=True)
                raise CheckpointError(f"{ns}/{name}: {support.reason}")
        node, device = self.pick_target(pod, to_node)
        cs = (pod.get("status", {}).get("containerStatuses") or [{}])[0]
        running = pod.get("status", {}).get("phase") == "Running" and bool(cs.get("state", {}).get("running"))
        from_periodic = False
        t_freeze = time.monotonic()
        ckpt_s = 0.0
        if running:
            try:
                res = self.checkpoint(pod)
                archive, ckpt_s, size = res.archive, res.seconds, res.size
            except CheckpointError as e:
                latest = self.store.latest(ns, name) if allow_periodic else None
                if latest is None:
                    self.event(pod, "CheckpointFailed", f"{reason}: {e}", warning=True)
                    raise
                log.warning("%s/%s: live checkpoint failed (%s); restoring the periodic checkpoint %s", ns, name,
                            e, latest.name)
                archive, size, from_periodic = latest, latest.stat().st_size, True
        else:
            latest = self.store.latest(ns, name) if allow_periodic else None
            if latest is None:
                msg = (f"{reason}: pod is not running and has no stored checkpoint; it cannot be restored "
                       "(restart it from scratch)")
                self.event(pod, "CheckpointUnavailable", msg, warning=True)
                raise CheckpointError(f"{ns}/{name}: {msg}")
            archive, size, from_periodic = latest, latest.stat().st_size, True
        # stop-and-copy: the archive now holds the workload; the old pod must not run on beside the restored one
        self.delete_pod(ns, name)
        try:
            new, restore_s = self.restore(pod, archive, node, device)
        except CheckpointError as e:
            self.event(pod, "RestoreFailed", f"{reason}: {e}; the archive stays at {archive}", warning=True)
            raise
        pause_s = time.monotonic() - t_freeze
        new_name = new["metadata"]["name"]
        shutil.rmtree(self.store.root / ns / name, ignore_errors=True)  # the new pod is the workload now
        msg = (f"{reason}: restored as {new_name} on {node} device {device} from "
               f"{'the periodic checkpoint' if from_periodic else 'a fresh checkpoint'} {archive.name} "
               f"({size / 2**20:.1f} MiB; checkpoint {ckpt_s:.2f} s, restore {restore_s:.2f} s)")
        self.event(new, "Restored", msg)
        log.info("%s/%s -> %s", ns, name, msg)
        return MigrationResult(old_pod=name, new_pod=new_name, node=node, device=device, checkpoint_s=ckpt_s,
                               restore_s=restore_s, pause_s=pause_s, archive_bytes=size,
                               from_periodic=from_periodic, import_s=self.last_import_s)
