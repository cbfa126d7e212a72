"""Prepare/unprepare of ResourceClaims: claim checks, quota files, CDI specs and the checkpoint.

Transport-free (the gRPC servicers in plugin.py call it). Calls are serialized by the caller.
Every claim gets an outcome; a bad claim never affects the others in the same call.
With rolling updates two plugin pods share the data dir: the caller's flock serializes their calls
and each call first re-reads the checkpoint if the other pod rewrote it, so a claim prepared by the
old pod is known to (and unprepared by) the new one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from hcs.devices.injection import (
    CONTAINER_LD_SO_PRELOAD,
    CONTAINER_STATE_DIR,
    ComputeShare,
    ContainerEdits,
    InjectionOptions,
    Mount,
    QuotaFiles,
    compute_share,
    compute_share_text,
    container_edits,
    create_ledger,
    discover_driver_libraries,
    ensure_preload_file,
    host_root,
    quota_file_text,
)
from hcs.devices.model import Device, Vendor
from hcs.errors import QuantityError
from hcs.fileio import atomic_write
from hcs.kube import KubeError
from hcs.node import cdi
from hcs.node.assignments import COMPUTE_POLICY_ANNOTATION, compute_policy_of
from hcs.node.config import host_path_exists
from hcs.node.dra import checkpoint as ckpt
from hcs.node.dra import metadata as devmeta
from hcs.node.dra.checkpoint import ClaimEntry, PreparedDevice
from hcs.node.dra.config import DraConfig
from hcs.node.dra.slices import CAPACITY_MEMORY, CAPACITY_TFLOPS, PublishedDevice, published_attributes
from hcs.quantity import parse_bytes, parse_quantity

log = logging.getLogger(__name__)

#: a prepare call with at least this many claims in one namespace reads them with one LIST
LIST_THRESHOLD = 8


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"


@dataclass(frozen=True)
class Outcome:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class ClaimSource(Protocol):
    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        """The ResourceClaim as the API returns it (camelCase JSON); KubeError on failure."""


class ClaimLookup(Protocol):
    def lookup(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        """A trusted local copy of the claim with exactly this UID, or None (then the source is asked)."""


class PrepareError(Exception):
    pass


def _base_request(name: str) -> str:
    return name.split("/", 1)[0]


class ClaimState:
    """The node's prepared claims. Not thread-safe: the plugin serializes calls."""

    def __init__(
        self,
        cfg: DraConfig,
        source: ClaimSource,
        devices: Callable[[], Mapping[str, PublishedDevice]],
        *,
        path_exists: Callable[[str], bool] | None = None,
        on_prepared: Callable[[dict[str, Any], Sequence[PreparedDevice]], None] | None = None,
        fetch_workers: int = 16,
        cache: ClaimLookup | None = None,
        attributes: Callable[[PublishedDevice], Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.cache = cache
        self.devices = devices
        self.path_exists = path_exists or host_path_exists
        self.on_prepared = on_prepared
        self.data_dir = cfg.data_dir
        self.cdi_dir = Path(cfg.cdi_dir)
        self.checkpoint_path = self.data_dir / "checkpoint.json"
        self.claims_dir = self.data_dir / "claims"
        self.claims: dict[str, ClaimEntry] = {}
        #: the device attributes as our slices publish them (device metadata files repeat them)
        self.attributes = attributes or (lambda pub: published_attributes(pub, cfg.mode))
        #: another plugin pod may write the checkpoint between our calls (rolling updates)
        self.shared = cfg.rolling_update
        #: the checkpoint file's (inode, mtime, size) as we last read or wrote it: every write replaces
        #: the file (rename), so an unchanged stamp means nobody else wrote it (shared mode: no re-read)
        self._checkpoint_stamp: tuple[int, int, int] | None = None
        self._pool = ThreadPoolExecutor(max_workers=fetch_workers, thread_name_prefix="dra-fetch")
        #: host side of the containers' read-only /etc/ld.so.preload (written before any spec names it)
        self.preload_path = self.data_dir / "ld.so.preload"
        self.options = InjectionOptions(
            interceptor_host_dir=cfg.interceptor_host_dir, device_isolation=cfg.device_isolation,
            preload_host_path=str(self.preload_path) if cfg.interceptor_host_dir else "",
            driver_libraries=discover_driver_libraries(tuple(Vendor), host_root()) if cfg.driver_libraries else {},
            sim_profile_host_path=cfg.sim_profile,
        )
        if cfg.compute_dir:  # node-wide compute ledgers: every container's uid creates and maps them
            try:
                Path(cfg.compute_dir).mkdir(parents=True, exist_ok=True)
                os.chmod(cfg.compute_dir, 0o1777)
            except OSError as exc:
                log.warning("compute dir %s: %s; compute shares are then held per process only", cfg.compute_dir, exc)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------- recovery
    def recover(self) -> list[str]:
        """Load the checkpoint (rebuild it from CDI specs when corrupt) and remove leftovers.

        Returns human-readable notes of what was repaired (also logged).
        """
        notes: list[str] = []
        self.data_dir.mkdir(parents=True, exist_ok=True)
        note = self._load()
        if note:
            notes.append(note)
        for uid, entry in list(self.claims.items()):
            if entry.state != ckpt.COMPLETED:
                self._remove_files(entry)
                del self.claims[uid]
                notes.append(f"claim {entry.namespace}/{entry.name} was mid-prepare at the last stop; cleaned up")
            elif entry.cdi_spec and not Path(entry.cdi_spec).exists():
                # a tmpfs CDI dir after a reboot: "prepared" would hand out a CDI ID nobody can resolve;
                # forgetting the claim makes the kubelet's next prepare write it again
                self._remove_files(entry)
                del self.claims[uid]
                notes.append(f"claim {entry.namespace}/{entry.name}: its CDI spec {entry.cdi_spec} is gone; "
                             "forgotten, the next prepare writes it again")
        known_specs = {e.cdi_spec for e in self.claims.values()}
        for spec in cdi.our_specs(self.cdi_dir, self.cfg.cdi_vendor, "device"):
            if str(spec) not in known_specs:
                cdi.remove(spec)
                notes.append(f"removed leaked CDI spec {spec}")
        known_dirs = {e.claim_dir for e in self.claims.values()}
        if self.claims_dir.is_dir():
            for d in self.claims_dir.iterdir():
                if str(d) not in known_dirs:
                    shutil.rmtree(d, ignore_errors=True)
                    notes.append(f"removed leaked claim dir {d}")
        self._save()
        for n in notes:
            log.warning("%s", n)
        return notes

    def _load(self) -> str:
        """Read the checkpoint into ``claims`` (rebuilt from the CDI specs when corrupt); a note if repaired."""
        stamp = self._stamp()
        if stamp is not None and stamp == self._checkpoint_stamp:
            return ""
        try:
            raw = self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            raw = b""
        self._checkpoint_stamp = stamp
        try:
            self.claims = ckpt.parse(raw, self.checkpoint_path) if raw else {}
        except ckpt.CheckpointCorrupt as exc:
            moved = ckpt.quarantine(self.checkpoint_path)
            self.claims = self._rebuild_from_cdi()
            self._save()
            return (f"checkpoint corrupt ({exc}); moved to {moved}, rebuilt {len(self.claims)} claim(s) "
                    "from CDI specs")
        return ""

    def _save(self, *, durable: bool = True) -> None:
        ckpt.save(self.checkpoint_path, self.claims, durable=durable)
        self._checkpoint_stamp = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.checkpoint_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Shared data dir (rolling updates): pick up the other plugin pod's checkpoint writes. The
        caller holds the cross-pod lock, so nobody writes while we read."""
        if self.shared:
            note = self._load()
            if note:
                log.warning("%s", note)

    def _rebuild_from_cdi(self) -> dict[str, ClaimEntry]:
        out: dict[str, ClaimEntry] = {}
        for spec in cdi.our_specs(self.cdi_dir, self.cfg.cdi_vendor, "device"):
            try:
                data = json.loads(spec.read_text())
                entry = ClaimEntry.from_json(json.loads(data["annotations"][cdi.CLAIM_ANNOTATION]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("CDI spec %s is unreadable (%s); removing it", spec, exc)
                cdi.remove(spec)
                continue
            out[entry.uid] = replace(entry, state=ckpt.COMPLETED, cdi_spec=str(spec))
        return out

    # ---------------------------------------------------------------- prepare
    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, Outcome]:
        self.refresh()
        out: dict[str, Outcome] = {}
        todo: dict[str, ClaimRef] = {}
        for ref in refs:
            entry = self.claims.get(ref.uid)
            if entry is not None and entry.state == ckpt.COMPLETED:
                out[ref.uid] = Outcome(devices=entry.devices)  # idempotent repeat
            else:
                todo.setdefault(ref.uid, ref)
        if not todo:
            return out
        plans = self._plans(list(todo.values()), out)
        if not plans:
            return out
        # Write the files, then record completion durably. No intent record first: a crash in between
        # leaves only files at paths derived from the UID in our own dirs, which recover() sweeps
        # (an entry-less CDI spec or claim dir is a leak), and the kubelet retries the prepare.
        done = self._write_files(plans, out)
        if not done or not self._record(done, out):
            return out
        if self.on_prepared is not None:
            for obj, plan in done:
                self.on_prepared(obj, plan.devices)
        return out

    def _plans(self, refs: Sequence[ClaimRef], out: dict[str, Outcome]) -> list[tuple[ClaimRef, dict[str, Any], _Plan]]:
        """Read and check each claim; a claim that fails gets its error in ``out``."""
        fetched, cached = self._fetch(refs)
        plans: list[tuple[ClaimRef, dict[str, Any], _Plan]] = []
        for ref in refs:
            obj = fetched[ref.uid]
            try:
                if isinstance(obj, str):
                    raise PrepareError(obj)
                try:
                    plan = self._plan(ref, obj)
                except PrepareError:
                    if ref.uid not in cached:
                        raise
                    # the cache may only save a round trip, never reject: judge the API's copy instead
                    obj = self._fetch_one(ref)
                    if isinstance(obj, str):
                        raise PrepareError(obj) from None
                    plan = self._plan(ref, obj)
                plans.append((ref, obj, plan))
            except PrepareError as exc:
                log.warning("prepare %s: %s", ref, exc)
                out[ref.uid] = Outcome(error=str(exc))
        return plans

    def _write_files(self, plans: Sequence[tuple[ClaimRef, dict[str, Any], _Plan]],
                     out: dict[str, Outcome]) -> list[tuple[dict[str, Any], _Plan]]:
        """Write each plan's files (CDI spec, quota files); a claim whose files fail gets its error in
        ``out`` and its files removed. Returns the claims written, now in ``self.claims`` as completed."""
        done: list[tuple[dict[str, Any], _Plan]] = []

        def write(plan: _Plan) -> Exception | None:
            try:
                self._write(plan)
                return None
            except (OSError, ValueError) as exc:
                return exc

        # file writes of different claims are independent: overlap their I/O waits in a batch
        errors = [write(plans[0][2])] if len(plans) == 1 else list(self._pool.map(write, [p for _, _, p in plans]))
        for (ref, obj, plan), err in zip(plans, errors, strict=True):
            if err is None:
                self.claims[ref.uid] = plan.entry(ckpt.COMPLETED)
                out[ref.uid] = Outcome(devices=plan.devices)
                done.append((obj, plan))
            else:
                log.error("prepare %s: writing files failed: %s", ref, err)
                self._remove_files(plan.entry(ckpt.STARTED))
                out[ref.uid] = Outcome(error=f"claim {ref}: writing the CDI spec or quota file failed: {err}")
        return done

    def _record(self, done: Sequence[tuple[dict[str, Any], _Plan]], out: dict[str, Outcome]) -> bool:
        """Save the checkpoint; when that fails, undo ``done`` (entries, files) and say so in ``out``."""
        try:
            self._save()
        except OSError as exc:  # not recorded durably: do not report these claims as prepared
            log.error("prepare: writing the checkpoint failed: %s", exc)
            for _, plan in done:
                self.claims.pop(plan.ref.uid, None)
                self._remove_files(plan.entry(ckpt.COMPLETED))
                out[plan.ref.uid] = Outcome(error=f"claim {plan.ref}: writing the checkpoint failed: {exc}")
            return False
        return True

    @staticmethod
    def _missing(ref: ClaimRef) -> str:
        return f"ResourceClaim {ref.namespace}/{ref.name} not found: it was deleted; nothing to prepare"

    @staticmethod
    def _failed(ref: ClaimRef, exc: Exception) -> str:
        return (f"cannot read ResourceClaim {ref.namespace}/{ref.name} from the API server ({exc}); "
                "the kubelet will retry")

    def _fetch_one(self, ref: ClaimRef) -> dict[str, Any] | str:
        try:
            return self.source.get_claim(ref.namespace, ref.name)
        except KubeError as exc:
            return self._missing(ref) if exc.status == 404 else self._failed(ref, exc)

    def _fetch(self, refs: Sequence[ClaimRef]) -> tuple[dict[str, dict[str, Any] | str], set[str]]:
        """Each claim (or an error text), and the UIDs answered by the cache. Claims the cache does
        not hold are read from the source; many of one namespace with one LIST."""
        out: dict[str, dict[str, Any] | str] = {}
        cached: set[str] = set()
        if self.cache is not None:
            rest: list[ClaimRef] = []
            for r in refs:
                obj = self.cache.lookup(r.namespace, r.name, r.uid)
                if obj is None:
                    rest.append(r)
                else:
                    out[r.uid] = obj
                    cached.add(r.uid)
            refs = rest
        singles: list[ClaimRef] = []
        by_ns: dict[str, list[ClaimRef]] = {}
        for r in refs:
            by_ns.setdefault(r.namespace, []).append(r)
        lister = getattr(self.source, "list_claims", None)
        for ns, group in by_ns.items():
            if lister is None or len(group) < LIST_THRESHOLD:
                singles.extend(group)
                continue
            try:
                items = {c["metadata"]["name"]: c for c in lister(ns)}
            except KubeError as exc:
                out.update({r.uid: self._failed(r, exc) for r in group})
                continue
            out.update({r.uid: items.get(r.name) or self._missing(r) for r in group})
        if len(singles) == 1:
            out[singles[0].uid] = self._fetch_one(singles[0])
        elif singles:
            out.update(zip([r.uid for r in singles], self._pool.map(self._fetch_one, singles), strict=True))
        return out, cached

    def _plan(self, ref: ClaimRef, obj: dict[str, Any]) -> _Plan:
        by_request = self._allocated_devices(ref, obj)
        claim_dir = self.claims_dir / ref.uid
        cdi_devices: list[cdi.CdiDevice] = []
        files: dict[Path, str] = {}
        metadata: dict[Path, str] = {}
        dirs: list[tuple[Path, tuple[str, ...], str]] = []
        prepared: list[PreparedDevice] = []
        policy: str | None = None
        for req, items in by_request.items():
            devs, quotas = self._quotas(ref, items)
            shares = self._shares(ref, items)
            compute = ""
            if any(s is not None for s in shares):
                if policy is None:
                    policy = self._compute_policy(ref, obj)
                # the claim's grant: every container using this request shares one budget
                compute = compute_share_text(shares, policy, f"claim-{ref.uid}-{req}"[:63])
            cdi_name = f"{ref.uid}-{req}"
            quota_host = claim_dir / f"quota-{req}"
            shm_host = claim_dir / f"shm-{req}"
            edits, ours = self._request_edits(ref, obj, req, items, devs, quotas, quota_host, shm_host, metadata)
            cdi_devices.append(cdi.CdiDevice(cdi_name, self._existing_only(edits, ours)))
            files[quota_host] = quota_file_text(quotas, shares)
            dirs.append((shm_host, tuple(d.uuid for d in devs), compute))
            qualified = cdi.qualified_name(self.cfg.cdi_kind, cdi_name)
            for i, (r, pub) in enumerate(items):
                prepared.append(PreparedDevice(
                    request_names=(req,),
                    pool_name=str(r["pool"]),
                    device_name=pub.name,
                    cdi_device_ids=(qualified,) if i == 0 else (),
                    share_id=str(r.get("shareID") or ""),
                ))
        spec_path = self.cdi_dir / cdi.spec_file_name(self.cfg.cdi_vendor, "device", ref.uid)
        return _Plan(ref, claim_dir, spec_path, cdi_devices, files, dirs, tuple(prepared), self.cfg.cdi_kind,
                     metadata)

    def _allocated_devices(self, ref: ClaimRef,
                           obj: dict[str, Any]) -> dict[str, list[tuple[dict[str, Any], PublishedDevice]]]:
        """The claim's allocation results of our driver, with the published device of each, by (base)
        request; PrepareError when the claim is not the one asked for or names no device of this node."""
        meta = obj.get("metadata") or {}
        if meta.get("uid") != ref.uid:
            raise PrepareError(
                f"ResourceClaim {ref.namespace}/{ref.name} has UID {meta.get('uid')}, the kubelet asked for "
                f"{ref.uid}: the claim was deleted and re-created; the kubelet will retry with the new claim"
            )
        allocation = (obj.get("status") or {}).get("allocation")
        if not allocation:
            raise PrepareError(f"ResourceClaim {ref} is not allocated (status.allocation is empty)")
        results = [r for r in (allocation.get("devices") or {}).get("results") or []
                   if r.get("driver") == self.cfg.driver_name]
        if not results:
            raise PrepareError(f"ResourceClaim {ref} has no devices allocated by driver {self.cfg.driver_name}")
        published = self.devices()
        by_request: dict[str, list[tuple[dict[str, Any], PublishedDevice]]] = {}
        for r in results:
            pool, name = r.get("pool", ""), r.get("device", "")
            if pool != self.cfg.node_name:
                raise PrepareError(
                    f"ResourceClaim {ref}: device {pool}/{name} belongs to pool {pool!r}, not to this node "
                    f"{self.cfg.node_name!r}; the claim was allocated for another node"
                )
            pub = published.get(name)
            if pub is None:
                raise PrepareError(
                    f"ResourceClaim {ref}: device {name!r} is not a device of driver {self.cfg.driver_name} on "
                    f"node {self.cfg.node_name} (known: {', '.join(sorted(published)) or 'none'})"
                )
            by_request.setdefault(_base_request(str(r.get("request", ""))), []).append((r, pub))
        return by_request

    @staticmethod
    def _quotas(ref: ClaimRef,
                items: Sequence[tuple[dict[str, Any], PublishedDevice]]) -> tuple[list[Device], list[int]]:
        """The devices of one request and the VRAM quota of each (its consumed capacity, else the
        published share), never above the device's VRAM."""
        devs: list[Device] = []
        quotas: list[int] = []
        for r, pub in items:
            consumed = (r.get("consumedCapacity") or {}).get(CAPACITY_MEMORY)
            try:
                quota = parse_bytes(consumed, field="consumedCapacity.memory") if consumed else pub.memory_bytes
            except QuantityError as exc:
                raise PrepareError(f"ResourceClaim {ref}: {exc}") from exc
            devs.append(pub.device)
            quotas.append(min(quota, pub.device.vram_total_bytes))
        return devs, quotas

    @staticmethod
    def _shares(ref: ClaimRef, items: Sequence[tuple[dict[str, Any], PublishedDevice]]) -> list[ComputeShare | None]:
        """The compute share of each device of one request: its consumed ``tflopsFP16`` (A100-equivalent
        TFLOPS, consumable mode) over the device's; None (not limited) when the claim consumed none,
        as a device-plugin container without ``ai.compute/tflops-fp16`` is not limited."""
        out: list[ComputeShare | None] = []
        for r, pub in items:
            consumed = (r.get("consumedCapacity") or {}).get(CAPACITY_TFLOPS)
            try:
                granted = float(parse_quantity(str(consumed), field="consumedCapacity.tflopsFP16")) if consumed else 0.0
            except QuantityError as exc:
                raise PrepareError(f"ResourceClaim {ref}: {exc}") from exc
            out.append(compute_share(granted, pub.device.compute.a100_equiv_tflops, pub.device.uuid or pub.name))
        return out

    def _compute_policy(self, ref: ClaimRef, obj: dict[str, Any]) -> str:
        """How the claim's compute share is enforced: the ``hcs.io/compute-policy`` of the claim's pods -
        the pod that owns it (a claim made from the pod's ResourceClaimTemplate) and those it is reserved
        for - ``burst`` only when every one asks for it (pods that disagree get ``hard``), else the
        node's default. A pod that cannot be read counts as the node's default."""
        default = self.cfg.compute_policy
        get_pod = getattr(self.source, "get_pod", None)
        pods: dict[str, str] = {}  # uid -> name
        for o in (obj.get("metadata") or {}).get("ownerReferences") or []:
            if o.get("kind") == "Pod" and o.get("apiVersion") == "v1":
                pods[str(o.get("uid", ""))] = str(o.get("name", ""))
        for r in (obj.get("status") or {}).get("reservedFor") or []:
            if r.get("resource") == "pods" and not r.get("apiGroup"):
                pods[str(r.get("uid", ""))] = str(r.get("name", ""))
        if get_pod is None or not pods:
            return default
        policies: set[str] = set()
        for uid, name in pods.items():
            try:
                pod = get_pod(ref.namespace, name)
            except (KubeError, OSError) as exc:
                log.warning("ResourceClaim %s: reading pod %s for its compute policy failed (%s); using %s",
                            ref, name, exc, default)
                policies.add(default)
                continue
            meta = pod.get("metadata") or {}
            if meta.get("uid") != uid:
                policies.add(default)  # another pod of that name now
                continue
            policies.add(compute_policy_of((meta.get("annotations") or {}).get(COMPUTE_POLICY_ANNOTATION)) or default)
        return policies.pop() if len(policies) == 1 else "hard"

    def _request_edits(self, ref: ClaimRef, obj: dict[str, Any], req: str,
                       items: Sequence[tuple[dict[str, Any], PublishedDevice]], devs: list[Device], quotas: list[int],
                       quota_host: Path, shm_host: Path,
                       metadata: dict[Path, str]) -> tuple[ContainerEdits, set[str]]:
        """One request's container edits (vendor injection, quota and shm mounts, and with device metadata
        its file, added to ``metadata``), and the host paths among them that this plugin writes."""
        qf = QuotaFiles(
            quota_host_path=str(quota_host),
            quota_container_path=f"{CONTAINER_STATE_DIR}/quota",
            shm_host_dir=str(shm_host),
            shm_container_dir=f"{CONTAINER_STATE_DIR}/shm",
            # node-wide compute ledgers (and the sub-health synchronise timing), as on the device-plugin path
            compute_host_dir=self.cfg.compute_dir if self.cfg.compute_dir and self.path_exists(self.cfg.compute_dir)
            else "",
        )
        try:
            edits = container_edits(
                devs, quotas, qf, self.options,
                extra_env={"HCS_CLAIM": f"{ref.namespace}/{ref.name}",
                           "HCS_DEVICES": ",".join(d.key for d in devs)},
            )
        except ValueError as exc:
            raise PrepareError(f"ResourceClaim {ref} request {req!r}: {exc}") from exc
        ours = {str(quota_host), str(shm_host)}
        if self.cfg.device_metadata:
            meta_host = quota_host.parent / devmeta.host_file_name(req)
            metadata[meta_host] = self._metadata(ref, obj, req, items)
            edits = replace(edits, mounts=(*edits.mounts, Mount(
                str(meta_host),
                devmeta.container_path(self.cfg.driver_name, ref.name, devmeta.pod_claim_name(obj), req),
                read_only=True,
            )))
            ours.add(str(meta_host))
        return edits, ours

    def _metadata(self, ref: ClaimRef, obj: dict[str, Any], req: str,
                  items: Sequence[tuple[dict[str, Any], PublishedDevice]]) -> str:
        """The request's DeviceMetadata file text; its name keeps the subrequest that was allocated."""
        request_ref = str(items[0][0].get("request") or req)
        devices = [devmeta.MetadataDevice(pool=str(r.get("pool", "")), name=pub.name, attributes=self.attributes(pub))
                   for r, pub in items]
        claim = {**obj, "metadata": {**(obj.get("metadata") or {}), "name": ref.name, "namespace": ref.namespace}}
        return devmeta.encode(devmeta.build(self.cfg.driver_name, claim, request_ref, devices))

    def _existing_only(self, edits: ContainerEdits, ours: set[str]) -> ContainerEdits:
        """Drop device nodes and mounts whose host path is missing (containerd would fail the container)."""
        nodes = tuple(n for n in edits.device_nodes if self.path_exists(n.source))
        mounts = tuple(m for m in edits.mounts if m.host_path in ours or m.host_path == self.options.preload_host_path
                       or self.path_exists(m.host_path))
        env = edits.env
        if self.cfg.interceptor_host_dir and not any(m.host_path == self.cfg.interceptor_host_dir for m in mounts):
            env = tuple((k, v) for k, v in env if k != "LD_PRELOAD")
            # without the library the preload file would only make ld.so complain in every process
            mounts = tuple(m for m in mounts if m.container_path != CONTAINER_LD_SO_PRELOAD)
            log.warning("interceptor dir %s missing on this node: VRAM quota not enforced in containers",
                        self.cfg.interceptor_host_dir)
        return ContainerEdits(env=env, device_nodes=nodes, mounts=mounts)

    def _write(self, plan: _Plan) -> None:
        try:
            plan.claim_dir.mkdir()
        except FileNotFoundError:
            plan.claim_dir.mkdir(parents=True)
        except FileExistsError:
            pass
        for path, text in plan.files.items():
            # no temp+rename needed: nothing references the file until the CDI spec is written below
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        for d, uuids, compute in plan.dirs:
            # the VRAM ledger: read-only in the container, its locks are the accounting; with the share file
            create_ledger(d, uuids, compute)
        if self.options.preload_host_path:
            ensure_preload_file(self.preload_path)
        for path, text in plan.metadata.items():  # world-readable: any uid in the container reads it
            atomic_write(path, text, mode=0o444)
        entry = plan.entry(ckpt.COMPLETED)
        spec = cdi.build_spec(plan.kind, plan.cdi_devices, {cdi.CLAIM_ANNOTATION: json.dumps(entry.to_json())})
        cdi.write_spec(plan.spec_path.parent, plan.spec_path.name, spec)

    # -------------------------------------------------------------- unprepare
    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, Outcome]:
        self.refresh()
        out: dict[str, Outcome] = {}
        changed = False
        for ref in refs:
            entry = self.claims.get(ref.uid)
            if entry is None:
                out[ref.uid] = Outcome()  # unknown claim: already unprepared (idempotent)
                continue
            try:
                self._remove_files(entry)
            except OSError as exc:
                out[ref.uid] = Outcome(error=f"claim {ref}: removing its files failed: {exc}")
                continue
            del self.claims[ref.uid]
            changed = True
            out[ref.uid] = Outcome()
        if changed:
            self._save(durable=False)
        return out

    def _remove_files(self, entry: ClaimEntry) -> None:
        if entry.cdi_spec:
            cdi.remove(Path(entry.cdi_spec))
        if entry.claim_dir:
            shutil.rmtree(entry.claim_dir, ignore_errors=True)


@dataclass(frozen=True)
class _Plan:
    ref: ClaimRef
    claim_dir: Path
    spec_path: Path
    cdi_devices: list[cdi.CdiDevice]
    files: dict[Path, str]
    #: (ledger dir, device UUIDs, compute share file text or "")
    dirs: list[tuple[Path, tuple[str, ...], str]]
    devices: tuple[PreparedDevice, ...]
    kind: str
    #: KEP-5304 metadata files (host path -> JSON), only with device_metadata
    metadata: dict[Path, str]

    def entry(self, state: str) -> ClaimEntry:
        return ClaimEntry(
            uid=self.ref.uid,
            namespace=self.ref.namespace,
            name=self.ref.name,
            state=state,
            cdi_spec=str(self.spec_path),
            claim_dir=str(self.claim_dir),
            devices=self.devices,
        )
