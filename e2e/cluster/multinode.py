#!/usr/bin/env python3
"""Opt-in multi-node mode of e2e/cluster: one control plane and N kubelets on this one host.

    e2e/cluster/up --workers 3        # start (idempotent); state in ~/.cache/hcs/cluster/multinode
    e2e/cluster/status --multinode
    e2e/cluster/down --multinode      # stop everything it started (pods, mounts, namespaces, rules)
    python3 e2e/cluster/hcs_cluster.py load-images --multinode build/images/*.oci.tar

It runs beside the shared single-node cluster (state/ports/bridge/cgroups/kubelet dir all distinct) and
never touches it. What makes several kubelets possible on one host (e2e/cluster/README.md, "Multi-node"):

* every worker gets its own **mount namespace** (persistent, bound to ``<state>/ns/<node>.mnt``), in
  which its containerd and kubelet run; per-node directories are bind-mounted over the host paths the
  chart uses with its defaults (/var/lib/kubelet, /var/lib/hcs, /run/hcs, /etc/cdi, /run/cdi,
  /usr/local, /opt), so hostPath volumes, device-plugin sockets, CDI specs, the interceptor the init
  container installs and the simulated node profile are per node, as on separate machines;
* each kubelet has its own ports, ``cgroupRoot`` (/hcsmn-<node>), containerd (root, state, socket) and
  CNI bridge (hcsmn<i>, 10.89.<i>.0/24);
* Services and DNS, which the shared cluster does without: ``netd`` (this file) is the cluster's
  kube-proxy + CoreDNS stand-in: it keeps iptables DNAT rules for every Service ClusterIP (own chains
  HCSMN-*) from the EndpointSlices, and answers DNS for ``*.svc.cluster.local`` on 10.97.0.10 (the
  kubelets' clusterDNS), forwarding other names to the host's resolver. The API server advertises
  10.98.255.1 (an address added to ``lo``) so pods reach it through the ``kubernetes`` Service, and
  calls webhooks on their endpoints (``--enable-aggregator-routing``).

Stdlib only (runs with the system python3, like hcs_cluster.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hcs_cluster as hc

SERVICE_CIDR = "10.97.0.0/16"
KUBE_SVC_IP = "10.97.0.1"
DNS_IP = "10.97.0.10"
HOST_IP = "10.98.255.1"  # on lo: the API server's advertise address and every kubelet's node IP
POD_SUPERNET = "10.89.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
MARK = "0x4000"

#: node name, simulated profile (driver/profiles/<name>.json)
WORKERS: tuple[tuple[str, str], ...] = (
    ("hcsmn-nvidia", "a100-80g-nvlink-8"),
    ("hcsmn-ascend", "ascend-910b-hccs-8"),
    ("hcsmn-mixed", "mixed-a100-910b"),
    ("hcsmn-hygon", "hygon-k100ai-xgmi-8"),
)
#: host paths bind-mounted per node inside the node's mount namespace -> dir name under <node>/root
NODE_MOUNTS = {"/var/lib/kubelet": "var-lib-kubelet", "/var/lib/hcs": "var-lib-hcs", "/run/hcs": "run-hcs",
               "/etc/cdi": "etc-cdi", "/run/cdi": "run-cdi", "/usr/local": "usr-local", "/opt": "opt",
               # every kubelet removes pod log dirs of pods it does not know: one log dir per node
               "/var/log/pods": "var-log-pods", "/var/log/containers": "var-log-containers"}
SIM_DIR = "/opt/hcs/sim"
SIM_LIB_DIR = "/opt/hcs/driver/lib"


def log(msg: str) -> None:
    print(f"[hcs-multinode {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- layout
def _port(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def cp_layout() -> hc.Layout:
    base = hc.layout()
    state = Path(os.environ.get("HCS_MN_DIR") or base.cache / "multinode").absolute()
    return dataclasses.replace(
        base, state=state, kubelet_dir=Path("/var/lib/kubelet"), node_name=WORKERS[0][0],
        scheduler_config_template=None,
        ports=hc.Ports(apiserver=_port("HCS_MN_APISERVER_PORT", 7443), etcd_client=_port("HCS_MN_ETCD_PORT", 7379),
                       etcd_peer=_port("HCS_MN_ETCD_PEER_PORT", 7380), controller_manager=7257, scheduler=7259,
                       kubelet=0, kubelet_healthz=0))


@dataclass(frozen=True)
class Worker:
    index: int  # 1-based
    name: str
    profile: str
    lay: hc.Layout  # state = <cp state>/nodes/<name>

    @property
    def nsfile(self) -> Path:
        return self.lay.state.parent.parent / "ns" / f"{self.name}.mnt"

    @property
    def root(self) -> Path:
        return self.lay.state / "root"

    @property
    def bridge(self) -> str:
        return f"hcsmn{self.index}"

    @property
    def subnet(self) -> str:
        return f"10.89.{self.index}.0/24"

    @property
    def cgroup_root(self) -> str:
        return f"/hcsmn-{self.name}"

    def nsenter(self) -> list[str]:
        return ["nsenter", f"--mount={self.nsfile}", "--"]


def workers(cp: hc.Layout, count: int) -> list[Worker]:
    if not 1 <= count <= len(WORKERS):
        raise hc.ClusterError(f"--workers {count}: give 1-{len(WORKERS)} (profiles: "
                              + ", ".join(f"{n}={p}" for n, p in WORKERS) + ")")
    out = []
    for i, (name, profile) in enumerate(WORKERS[:count], 1):
        lay = dataclasses.replace(cp, state=cp.state / "nodes" / name, node_name=name,
                                  ports=dataclasses.replace(cp.ports, kubelet=10350 + i, kubelet_healthz=10360 + i))
        out.append(Worker(i, name, profile, lay))
    return out


def recorded_workers(cp: hc.Layout) -> int:
    try:
        return int(json.loads((cp.state / "cluster.json").read_text()).get("workers", 0))
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------- components
def _swap(argv: Sequence[str], old: str, new: str | None) -> list[str]:
    out = []
    for a in argv:
        if a == old or (old.endswith("=") and a.startswith(old)):
            if new is not None:
                out.append(new)
        else:
            out.append(a)
    return out


def control_plane(cp: hc.Layout) -> list[hc.Component]:
    comps = {c.name: c for c in hc.components(cp)}
    api = comps["kube-apiserver"]
    argv = list(api.argv)
    for old, new in (("--bind-address=", "--bind-address=0.0.0.0"),
                     ("--advertise-address=", f"--advertise-address={HOST_IP}"),
                     ("--endpoint-reconciler-type=", "--endpoint-reconciler-type=lease"),
                     ("--service-cluster-ip-range=", f"--service-cluster-ip-range={SERVICE_CIDR}"),
                     ("--kubelet-preferred-address-types=", "--kubelet-preferred-address-types=InternalIP")):
        argv = _swap(argv, old, new)
    argv.append("--enable-aggregator-routing=true")
    kcm = _swap(comps["kube-controller-manager"].argv, "--service-cluster-ip-range=",
                f"--service-cluster-ip-range={SERVICE_CIDR}")
    netd = hc.Component("netd", (sys.executable, str(Path(__file__).resolve()), "netd", str(cp.state)), None, "")
    return [comps["etcd"], dataclasses.replace(api, argv=tuple(argv)),
            dataclasses.replace(comps["kube-controller-manager"], argv=tuple(kcm)), comps["kube-scheduler"], netd]


def node_components(w: Worker, cp: hc.Layout) -> list[hc.Component]:
    cfg = w.lay.config
    return [
        hc.Component("containerd", (*w.nsenter(), str(cp.bin / "containerd"), f"--config={cfg / 'containerd.toml'}"),
                     None, f"unix:{w.lay.containerd_sock}"),
        hc.Component("kubelet", (
            *w.nsenter(), str(cp.bin / "kubelet"), f"--config={cfg / 'kubelet.yaml'}",
            f"--kubeconfig={cfg / 'kubelet.kubeconfig'}", "--root-dir=/var/lib/kubelet",
            f"--hostname-override={w.name}", f"--node-ip={HOST_IP}",
            f"--node-labels=hcs.io/accelerator=true,hcs.io/sim-profile={w.profile}", "--v=1"),
            w.lay.ports.kubelet, f"http://127.0.0.1:{w.lay.ports.kubelet_healthz}/healthz"),
    ]


def render_node(w: Worker, cp: hc.Layout) -> dict[Path, str]:
    files = {p: t for p, t in hc.render_configs(w.lay).items() if p.name != "kube-scheduler.yaml"}
    cfg = w.lay.config
    cni_path = cfg / "cni" / "10-hcs-bridge.conflist"
    cni = json.loads(files.pop(cni_path))
    cni["name"] = f"hcsmn-{w.name}"
    plugin = cni["plugins"][0]
    plugin["bridge"] = w.bridge
    plugin["ipam"]["ranges"] = [[{"subnet": w.subnet}]]
    files[cfg / "cni" / "10-hcsmn.conflist"] = json.dumps(cni, indent=1) + "\n"
    kubelet = files[cfg / "kubelet.yaml"]
    kubelet = kubelet.replace("cgroupRoot: /\n", f"cgroupRoot: {w.cgroup_root}\n")
    kubelet = kubelet.replace(str(w.lay.pki / "ca.crt"), str(cp.pki / "ca.crt"))
    kubelet = kubelet.replace("clusterDomain: cluster.local\n",
                              f"clusterDomain: {CLUSTER_DOMAIN}\nclusterDNS:\n- {DNS_IP}\n")
    files[cfg / "kubelet.yaml"] = kubelet
    files[cfg / "kubelet.kubeconfig"] = hc.kubeconfig_text(cp.pki, f"https://127.0.0.1:{cp.ports.apiserver}",
                                                           f"kubelet-{w.name}")
    return files


# ---------------------------------------------------------------- host setup
def sh(*cmd: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, input=input_text, timeout=120)
    if check and r.returncode != 0:
        raise hc.ClusterError(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[:800]}")
    return r


def _mounts() -> list[tuple[str, str]]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        out.append((f[4].replace("\\040", " "), line.split(" - ", 1)[1].split()[0]))
    return out


def ensure_host_network() -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")  # pods on one node's bridge reach another's
    have = sh("ip", "-o", "addr", "show", "dev", "lo").stdout
    for ip in (HOST_IP, DNS_IP):
        if f" {ip}/32 " not in have:
            sh("ip", "addr", "add", f"{ip}/32", "dev", "lo")


def ensure_cgroups(w: Worker) -> None:
    root = Path("/sys/fs/cgroup")
    for hier in sorted(root.iterdir()):
        if hier.name == "unified" or not hier.is_dir():
            continue
        d = hier / w.cgroup_root.lstrip("/")
        d.mkdir(exist_ok=True)
        if hier.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((hier / f).read_text())


def ensure_namespace(w: Worker, cp: hc.Layout) -> None:
    """The node's persistent mount namespace with its per-node directories bound over the host paths."""
    nsdir = w.nsfile.parent
    nsdir.mkdir(parents=True, exist_ok=True)
    if str(nsdir) not in [m for m, _ in _mounts()]:
        sh("mount", "--bind", str(nsdir), str(nsdir))
        sh("mount", "--make-private", str(nsdir))
    if any(m == str(w.nsfile) and t == "nsfs" for m, t in _mounts()):
        return
    for host_path, sub in NODE_MOUNTS.items():
        (w.root / sub).mkdir(parents=True, exist_ok=True)
        Path(host_path).mkdir(parents=True, exist_ok=True)  # the mount point (an empty dir if the host lacks it)
    for sub in ("bin", "lib", "sbin", "share"):
        (w.root / "usr-local" / sub).mkdir(parents=True, exist_ok=True)
    w.nsfile.touch()
    sh("unshare", f"--mount={w.nsfile}", "--propagation", "slave", "true")
    # "/" shared inside the namespace (a new peer group; the host's own "/" here is private, which nothing
    # below may change): pods' HostToContainer mounts of host paths need a shared or slave source, as on a
    # systemd host. Nothing propagates back to the host.
    script = "set -e\nmount --make-rshared /\n" + "".join(f"mount --bind {w.root / sub} {host} && mount --make-rshared {host}\n"
                                  for host, sub in NODE_MOUNTS.items())
    sh(*w.nsenter(), "sh", "-c", script)
    log(f"{w.name}: mount namespace {w.nsfile} ({', '.join(NODE_MOUNTS)} per node)")


def simulate_devices(w: Worker) -> None:
    """The simulated accelerator node: libraries, profile, device nodes and driver dirs (e2e/kind's script)."""
    lib_src = hc.REPO / "driver" / "build" / "lib"
    if not (lib_src / "libnvidia-ml.so.1").exists():
        sh("make", "-s", "-C", str(hc.REPO / "driver"))
    profile = hc.REPO / "driver" / "profiles" / f"{w.profile}.json"
    opt = w.root / "opt"
    (opt / "hcs" / "sim").mkdir(parents=True, exist_ok=True)
    lib_dst = opt / "hcs" / "driver" / "lib"
    lib_dst.mkdir(parents=True, exist_ok=True)
    sh("cp", "-a", f"{lib_src}/.", str(lib_dst))
    target = opt / "hcs" / "sim" / "profile.json"
    if not target.exists() or target.read_bytes() != profile.read_bytes():
        hc.atomic_write(target, profile.read_bytes())
    script = sh(sys.executable, str(hc.REPO / "e2e" / "kind" / "sim_devices.py"), str(profile),
                "--lib-dir", SIM_LIB_DIR, "--sim-dir", SIM_DIR).stdout
    sh(*w.nsenter(), "sh", "-e", input_text=script)
    ascend = w.root / "usr-local" / "Ascend" / "driver"
    if ascend.is_dir():
        (ascend / "version.info").write_text("Version=hcs-e2e-simulated\n")


# ---------------------------------------------------------------- pki
def ensure_pki(cp: hc.Layout, ws: Sequence[Worker]) -> None:
    pki = cp.pki
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    if not (pki / "ca.crt").exists():
        hc.ensure_pki(dataclasses.replace(cp, node_name=ws[0].name))  # CA, SA keys, client certs
    sans = ["IP:127.0.0.1", f"IP:{KUBE_SVC_IP}", f"IP:{HOST_IP}", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc", f"DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}"]
    if f"IP:{HOST_IP}" not in (pki / "apiserver.ext").read_text():
        for suffix in (".crt", ".ext"):
            (pki / f"apiserver{suffix}").unlink(missing_ok=True)
    hc._cert(pki, "apiserver", "/CN=kube-apiserver", server_sans=sans, client=False)
    for w in ws:
        hc._cert(pki, f"kubelet-{w.name}", f"/O=system:nodes/CN=system:node:{w.name}")
    hc.ensure_pki(dataclasses.replace(cp, node_name=ws[0].name))


# ---------------------------------------------------------------- API helpers
def api(cp: hc.Layout, method: str, path: str, body: object | None = None) -> dict[str, object]:
    url = f"https://127.0.0.1:{cp.ports.apiserver}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10, context=hc._client_ssl(cp)) as r:
        out: dict[str, object] = json.loads(r.read() or b"{}")
    return out


def node_ready(cp: hc.Layout, name: str, since: float | None) -> bool:
    return hc.node_ready(dataclasses.replace(cp, node_name=name), since=since)


def ensure_dns_service(cp: hc.Layout) -> None:
    """kube-system/kube-dns holds DNS_IP so the API server never hands it to another Service."""
    try:
        api(cp, "GET", "/api/v1/namespaces/kube-system/services/kube-dns")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        api(cp, "POST", "/api/v1/namespaces/kube-system/services", {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"},
                         "annotations": {"hcs.io/served-by": "e2e/cluster/multinode.py netd"}},
            "spec": {"clusterIP": DNS_IP, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}})


# ---------------------------------------------------------------- commands
def _ensure(lay: hc.Layout, comp: hc.Component, digest: str) -> bool:
    if hc.alive_pid(lay, comp.name):
        rec = hc._pid_record(lay, comp.name) or {}
        if rec.get("argv") == list(comp.argv) and rec.get("config_sha256") == digest:
            return False
        log(f"{comp.name} ({lay.node_name}): binary, flags or config changed: restarting it")
        hc.stop(lay, comp.name)
    with contextlib.suppress(FileNotFoundError):
        (lay.run / f"{comp.name}.pid").unlink()
    hc.start(lay, comp, {"config_sha256": digest})
    return True


def _digest(files: dict[Path, str]) -> str:
    return hashlib.sha256("".join(files[p] for p in sorted(files)).encode()).hexdigest()


def cmd_up(count: int) -> int:
    t0 = time.monotonic()
    cp = cp_layout()
    ws = workers(cp, count)
    if os.geteuid() != 0:
        raise hc.ClusterError("the multi-node cluster needs root (kubelets, containerd, mount namespaces)")
    with hc.file_lock(hc.state_lock(cp), "multinode up/down"):
        hc.ensure_debian_packages()
        if not Path("/usr/sbin/iptables").exists():  # Service routing (netd)
            log("installing Debian package iptables")
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "iptables"], capture_output=True, text=True,
                               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            if r.returncode != 0:
                raise hc.ToolchainMissing(f"iptables is needed for Service routing: apt-get install iptables "
                                          f"failed: {r.stderr.strip()[-500:]}")
        hc.build(cp)
        cp.state.mkdir(parents=True, exist_ok=True)
        rec = cp.state / "cluster.json"
        prev = recorded_workers(cp)
        hc.atomic_write(rec, json.dumps(dict(cp.as_dict(), workers=max(count, prev), multinode=True), indent=1) + "\n")
        ensure_pki(cp, ws)
        for d in (cp.logs, cp.run, cp.state / "etcd", cp.config):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(cp.state / "etcd", 0o700)
        hc.atomic_write(cp.config / "kube-scheduler.yaml", hc.scheduler_config(cp))
        ensure_host_network()
        comps = {c.name: c for c in control_plane(cp)}
        _ensure(cp, comps["etcd"], "")
        hc.wait_healthy(cp, comps["etcd"], 60)
        _ensure(cp, comps["kube-apiserver"], "")
        hc.wait_healthy(cp, comps["kube-apiserver"], 180)
        for name in ("kube-controller-manager", "kube-scheduler"):
            _ensure(cp, comps[name], _digest({cp.config / "kube-scheduler.yaml":
                                              (cp.config / "kube-scheduler.yaml").read_text()}))
        ensure_dns_service(cp)
        _ensure(cp, comps["netd"], hashlib.sha256(Path(__file__).read_bytes()).hexdigest())
        started: dict[str, float | None] = {}
        for w in ws:
            files = render_node(w, cp)
            for path, text in files.items():
                hc.atomic_write(path, text)
            for d in (w.lay.logs, w.lay.run):
                d.mkdir(parents=True, exist_ok=True)
            ensure_namespace(w, cp)
            ensure_cgroups(w)
            simulate_devices(w)
            nc = {c.name: c for c in node_components(w, cp)}
            _ensure(w.lay, nc["containerd"], _digest({p: t for p, t in files.items() if p.name == "containerd.toml"}))
            hc.wait_healthy(w.lay, nc["containerd"], 30)
            hc.import_images(w.lay)
            started[w.name] = time.time() - 1 if _ensure(w.lay, nc["kubelet"], _digest(files)) else None
        for name in ("kube-controller-manager", "kube-scheduler"):
            hc.wait_healthy(cp, comps[name], 60)
        deadline = time.monotonic() + 150
        for w in ws:
            while not node_ready(cp, w.name, started[w.name]):
                if time.monotonic() > deadline:
                    raise hc.ClusterError(f"node {w.name} not Ready after 150 s; see {w.lay.logs}/kubelet.log:\n"
                                          + hc.log_tail(w.lay, "kubelet"))
                if hc.alive_pid(w.lay, "kubelet") is None:
                    raise hc.ClusterError(f"kubelet of {w.name} exited:\n" + hc.log_tail(w.lay, "kubelet"))
                time.sleep(0.5)
        log(f"up in {time.monotonic() - t0:.1f} s: nodes {', '.join(w.name for w in ws)} Ready; "
            f"export KUBECONFIG={cp.kubeconfig}")
        return 0


def _archive_ref(path: str) -> tuple[str, str]:
    """(image name, manifest digest) of an OCI archive (io.containerd.image.name or
    org.opencontainers.image.ref.name)."""
    import tarfile

    with tarfile.open(path) as tf:
        member = tf.extractfile("index.json")
        if member is None:
            raise hc.ClusterError(f"{path}: no index.json (not an OCI archive)")
        index = json.loads(member.read())
    for m in index.get("manifests") or []:
        ann = m.get("annotations") or {}
        ref = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name") or ""
        if "/" in ref and ":" in ref:
            return str(ref), str(m.get("digest", ""))
    raise hc.ClusterError(f"{path}: index.json names no image (annotation org.opencontainers.image.ref.name)")


def load_images(archives: Sequence[str]) -> int:
    """ctr import every archive into every node's containerd (the images pods use with pullPolicy Never)."""
    cp = cp_layout()
    n = recorded_workers(cp)
    if not n:
        raise hc.ClusterError(f"no multi-node cluster in {cp.state}: run `e2e/cluster/up --workers 3` first")
    found = {a: _archive_ref(a) for a in archives}
    refs = {a: r for a, (r, _d) in found.items()}
    for w in workers(cp, n):
        for a, ref in refs.items():
            base = ref.rsplit(":", 1)[0]
            r = hc.ctr(w.lay, "images", "import", "--snapshotter", "overlayfs", "--base-name", base, a, check=False)
            if r.returncode != 0:
                raise hc.ClusterError(f"ctr import {a} into {w.name} failed: {r.stderr.strip()}")
            hc.ctr(w.lay, "images", "label", ref, "io.cri-containerd.pinned=pinned", check=False)
        have = {f[0]: f[2] for f in (ln.split() for ln in hc.ctr(w.lay, "images", "ls").stdout.splitlines()[1:])
                if len(f) >= 3}
        wrong = [f"{r} ({have.get(r, 'missing')}, archive {d})" for r, d in found.values() if have.get(r) != d]
        if wrong:
            raise hc.ClusterError(f"{w.name}: after import, containerd's image is not the archive's: {', '.join(wrong)}")
        log(f"{w.name}: {', '.join(refs.values())} imported")
    return 0


def cmd_status() -> int:
    cp = cp_layout()
    n = recorded_workers(cp)
    ok = True
    for c in control_plane(cp):
        good = hc.alive_pid(cp, c.name) is not None and hc.healthy(cp, c)
        ok &= good
        print(f"{c.name:25s} {'healthy' if good else 'down'}")
    for w in workers(cp, n) if n else []:
        for c in node_components(w, cp):
            good = hc.alive_pid(w.lay, c.name) is not None and hc.healthy(w.lay, c)
            ok &= good
            print(f"{w.name + ' ' + c.name:25s} {'healthy' if good else 'down'}")
        ready = ok and node_ready(cp, w.name, None)
        ok &= ready
        print(f"{'node ' + w.name:25s} {'Ready' if ready else 'NotReady'}")
    print(f"state {cp.state}; kubeconfig {cp.kubeconfig}\nstatus: {'up' if ok and n else 'down'}")
    return 0 if ok and n else 1


def cmd_down(purge: bool) -> int:
    cp = cp_layout()
    n = recorded_workers(cp) or len(WORKERS)
    with hc.file_lock(hc.state_lock(cp), "multinode up/down"):
        for w in workers(cp, n):
            hc.stop(w.lay, "kubelet")
            if hc.alive_pid(w.lay, "containerd"):
                crictl = [*w.nsenter(), str(cp.bin / "crictl"), "--runtime-endpoint",
                          f"unix://{w.lay.containerd_sock}", "--timeout", "20s"]
                subprocess.run([*crictl, "rmp", "--all", "--force"], capture_output=True, text=True, timeout=120)
            hc.stop(w.lay, "containerd")
            runc = hc.DEBIAN_PACKAGES["runc"]
            if w.lay.runc_root.is_dir() and w.nsfile.exists():
                for ns in w.lay.runc_root.iterdir():
                    ids = subprocess.run([*w.nsenter(), runc, "--root", str(ns), "list", "-q"], capture_output=True,
                                         text=True).stdout.split()
                    for cid in ids:
                        subprocess.run([*w.nsenter(), runc, "--root", str(ns), "delete", "--force", cid],
                                       capture_output=True)
            for pid in _shims_of(w):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            if any(m == str(w.nsfile) for m, _ in _mounts()):
                subprocess.run(["umount", str(w.nsfile)], capture_output=True)
            for mp in hc._mounts_under([w.lay.state]):
                subprocess.run(["umount", "-l", mp], capture_output=True)
            if Path(f"/sys/class/net/{w.bridge}").exists():
                subprocess.run(["ip", "link", "del", w.bridge], capture_output=True)
            _remove_cgroups(w)
        for name in ("netd", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            hc.stop(cp, name)
        netd_flush()
        for ip in (HOST_IP, DNS_IP):
            subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True)
        for nsdir in [cp.state / "ns"]:
            if any(m == str(nsdir) for m, _ in _mounts()):
                subprocess.run(["umount", str(nsdir)], capture_output=True)
        if purge and cp.state.exists():
            import shutil
            shutil.rmtree(cp.state, ignore_errors=True)
            log(f"removed {cp.state}")
        log("multinode down: nothing left running")
    return 0


def _shims_of(w: Worker) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if "containerd-shim" in os.readlink(d / "exe") and \
                        str(w.lay.containerd_sock) in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
    return pids


def _remove_cgroups(w: Worker) -> None:
    for hier in Path("/sys/fs/cgroup").iterdir():
        top = hier / w.cgroup_root.lstrip("/")
        if top.is_dir():
            for dirpath, _d, _f in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


# ---------------------------------------------------------------- netd: Services (iptables) + DNS
CHAINS = ("HCSMN-SERVICES", "HCSMN-POSTROUTING")
JUMPS = (("PREROUTING", "HCSMN-SERVICES"), ("OUTPUT", "HCSMN-SERVICES"), ("POSTROUTING", "HCSMN-POSTROUTING"))


def netd_flush() -> None:
    for parent, chain in JUMPS:
        while subprocess.run(["iptables", "-w", "-t", "nat", "-D", parent, "-j", chain],
                             capture_output=True).returncode == 0:
            pass
    for chain in CHAINS:
        subprocess.run(["iptables", "-w", "-t", "nat", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-t", "nat", "-X", chain], capture_output=True)


class Netd:
    def __init__(self, state: Path) -> None:
        self.cp = dataclasses.replace(cp_layout(), state=state)
        self.records: dict[str, list[str]] = {}  # fqdn -> IPs
        self.lock = threading.Lock()
        self.upstream = next((ln.split()[1] for ln in Path("/etc/resolv.conf").read_text().splitlines()
                              if ln.startswith("nameserver")), "")
        self.last_rules = ""

    def get(self, path: str) -> list[dict[str, object]]:
        items = api(self.cp, "GET", path).get("items") or []
        assert isinstance(items, list)
        return items

    def sync(self) -> None:
        services = self.get("/api/v1/services")
        slices = self.get("/apis/discovery.k8s.io/v1/endpointslices")
        eps: dict[tuple[str, str], list[tuple[str, dict[str, int]]]] = {}
        for s in slices:
            meta: dict = s["metadata"]  # type: ignore[assignment]
            svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
            if not svc:
                continue
            ports = {str(p.get("name") or ""): int(p["port"]) for p in (s.get("ports") or [])  # type: ignore[union-attr]
                     if p.get("port")}
            for e in s.get("endpoints") or []:  # type: ignore[union-attr]
                if (e.get("conditions") or {}).get("ready") is False:
                    continue
                for addr in e.get("addresses") or []:
                    eps.setdefault((meta["namespace"], svc), []).append((addr, ports))
        rules = ["*nat", ":HCSMN-SERVICES - [0:0]", ":HCSMN-POSTROUTING - [0:0]",
                 f"-A HCSMN-SERVICES -d {SERVICE_CIDR} -j MARK --set-xmark {MARK}/{MARK}",
                 f"-A HCSMN-POSTROUTING -s {POD_SUPERNET} -m mark --mark {MARK}/{MARK} -j MASQUERADE"]
        records: dict[str, list[str]] = {}
        for svc in services:
            meta, spec = svc["metadata"], svc["spec"]  # type: ignore[index]
            ns, name = meta["namespace"], meta["name"]  # type: ignore[index]
            fqdn = f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"
            ip = spec.get("clusterIP")  # type: ignore[union-attr]
            backends = eps.get((ns, name), [])
            if ip and ip != "None":
                records[fqdn] = [ip]
                for port in spec.get("ports") or []:  # type: ignore[union-attr]
                    proto = str(port.get("protocol", "TCP")).lower()
                    targets = [f"{a}:{p[str(port.get('name') or '')]}" for a, p in backends
                               if str(port.get("name") or "") in p]
                    targets = sorted(set(targets))
                    for i, t in enumerate(targets):
                        prob = "" if i == len(targets) - 1 else \
                            f"-m statistic --mode random --probability {1 / (len(targets) - i):.5f} "
                        rules.append(f"-A HCSMN-SERVICES -d {ip}/32 -p {proto} --dport {port['port']} {prob}"
                                     f"-j DNAT --to-destination {t}")
            else:  # headless: the endpoints' addresses
                records[fqdn] = sorted({a for a, _ in backends})
        rules.append("COMMIT")
        text = "\n".join(rules) + "\n"
        if text != self.last_rules:
            r = subprocess.run(["iptables-restore", "-w", "--noflush"], input=text, capture_output=True, text=True)
            if r.returncode != 0:
                log(f"iptables-restore failed: {r.stderr.strip()[:500]}")
            else:
                self.last_rules = text
                for parent, chain in JUMPS:
                    if subprocess.run(["iptables", "-w", "-t", "nat", "-C", parent, "-j", chain],
                                      capture_output=True).returncode != 0:
                        subprocess.run(["iptables", "-w", "-t", "nat", "-I", parent, "1", "-j", chain], check=True)
                log(f"synced {len(rules) - 6} service rules")
        with self.lock:
            self.records = records

    # --- DNS (RFC 1035 subset: one question, A answers; AAAA and others get an empty answer)
    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        qid, flags, qd = struct.unpack("!HHH", query[:6])
        if qd != 1:
            return None
        labels, i = [], 12
        while i < len(query) and query[i]:
            n = query[i]
            labels.append(query[i + 1:i + 1 + n].decode(errors="replace").lower())
            i += 1 + n
        qname_end = i + 1
        if qname_end + 4 > len(query):
            return None
        qtype, _qclass = struct.unpack("!HH", query[qname_end:qname_end + 4])
        question = query[12:qname_end + 4]
        name = ".".join(labels)
        if not name.endswith("." + CLUSTER_DOMAIN) and name != CLUSTER_DOMAIN:
            return self.forward(query)
        with self.lock:
            ips = self.records.get(name)
        rd = flags & 0x0100
        if ips is None and not self._is_prefix(name):
            return struct.pack("!HHHHHH", qid, 0x8400 | rd | 0x0080 | 3, 1, 0, 0, 0) + question  # NXDOMAIN
        answers = b""
        count = 0
        if qtype == 1:
            for ip in ips or []:
                answers += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(ip)
                count += 1
        return struct.pack("!HHHHHH", qid, 0x8400 | rd | 0x0080, 1, count, 0, 0) + question + answers

    def _is_prefix(self, name: str) -> bool:
        with self.lock:
            return any(r.endswith("." + name) for r in self.records)

    def forward(self, query: bytes) -> bytes | None:
        if not self.upstream:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            try:
                s.sendto(query, (self.upstream, 53))
                return s.recv(4096)
            except OSError:
                return None

    def serve_dns(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((DNS_IP, 53))
        while True:
            data, peer = sock.recvfrom(4096)
            try:
                reply = self.answer(data)
            except Exception as e:  # noqa: BLE001 - a bad packet never stops the server
                log(f"dns: bad query from {peer}: {e}")
                reply = None
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, peer)

    def run(self) -> int:
        threading.Thread(target=self.serve_dns, daemon=True).start()
        log(f"netd: DNS on {DNS_IP}:53 (upstream {self.upstream or 'none'}), Service rules in {', '.join(CHAINS)}")
        while True:
            try:
                self.sync()
            except (urllib.error.URLError, OSError, ValueError, KeyError, ssl.SSLError) as e:
                log(f"netd: sync failed: {e}")
            time.sleep(1)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "netd":
        return Netd(Path(argv[1])).run()
    print("usage: multinode.py netd STATE_DIR (started by e2e/cluster/up --workers N)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
