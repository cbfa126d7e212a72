#!/usr/bin/env python3
"""The checkpoint cluster: a separate local Kubernetes whose nodes can checkpoint AND restore containers.

    python3 e2e/checkpoint/cluster.py up      # build what is missing, start (idempotent), wait for nodes Ready
    python3 e2e/checkpoint/cluster.py status
    python3 e2e/checkpoint/cluster.py down [--purge]
    python3 e2e/checkpoint/cluster.py env     # KUBECONFIG=... lines for a shell

Why a cluster of its own (the shared one stays untouched):

* **containerd v2.3.7, not v2.4.2.** containerd 2.4 removed "restoring checkpoint data during CRI
  CreateContainer" (RELEASES.md of v2.4.2, deprecated in 2.3, replacement: KEP-5823's RestorePod, which
  2.4.2 does not implement either). v2.3.7 still restores a container whose image is a checkpoint image,
  behind ``enable_experimental_restore_via_create = true``. It is built here with ``go install`` from the Go
  module proxy into ``~/.cache/hcs/checkpoint/containerd-v2.3.7``.
* **CRIU 4.1 on containerd's PATH**: the trixie CRIU root from ``e2e/checkpoint/criu-setup``. Each node's
  containerd starts with ``<cache>/nodebin`` (containerd 2.3.7 binaries + the ``criu`` wrapper) first on
  PATH, so containerd, the shim and runc use that CRIU, while the host's ``/usr/sbin/criu`` (3.17, broken
  here) stays as it is.

Everything else is e2e/cluster's machinery (multinode.py's per-node mount namespaces, cgroup roots and
bridges): control plane on 8443 / etcd 8379,8380 / 8257 / 8259, nodes ``hcsck-a`` and ``hcsck-b`` (kubelets
10451/10452, healthz 10461/10462, node IP 10.98.255.1, bridges hcsmn11/hcsmn12 with 10.89.11-12.0/24,
cgroup roots /hcsmn-hcsck-*), state in ``~/.cache/hcs/checkpoint/cluster`` (``HCS_CKPT_DIR``). Each node
is a simulated 8-GPU box (driver/profiles: hcsck-a A100 80GB, hcsck-b H100), so device UUIDs differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "e2e" / "cluster"))

import hcs_cluster as hc  # noqa: E402
import multinode as mn  # noqa: E402

CONTAINERD_VERSION = "v2.3.7"
NODES: tuple[tuple[str, str], ...] = (("hcsck-a", "a100-80g-nvlink-8"), ("hcsck-b", "h100-nvlink-8"))
FIRST_INDEX = 11  # bridges hcsmn11.., subnets 10.89.11.0/24..: clear of multinode's 1-4


def log(msg: str) -> None:
    print(f"[hcs-ckpt-cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cache() -> Path:
    return Path(os.environ.get("HCS_CKPT_CACHE") or Path.home() / ".cache" / "hcs" / "checkpoint").absolute()


def criu_cache() -> Path:
    return Path(os.environ.get("HCS_CRIU_CACHE") or Path.home() / ".cache" / "hcs" / "criu").absolute()


def nodebin() -> Path:
    return cache() / "nodebin"


def cp_layout() -> hc.Layout:
    base = hc.layout()
    state = Path(os.environ.get("HCS_CKPT_DIR") or cache() / "cluster").absolute()
    return dataclasses.replace(
        base, state=state, kubelet_dir=Path("/var/lib/kubelet"), node_name=NODES[0][0],
        scheduler_config_template=None,
        ports=hc.Ports(apiserver=8443, etcd_client=8379, etcd_peer=8380, controller_manager=8257, scheduler=8259,
                       kubelet=0, kubelet_healthz=0))


def fast_dir(cp: hc.Layout) -> Path:
    """The nodes' state (containerd root, kubelet root with its checkpoints dir) and the checkpoint store.

    A tmpfs (``HCS_CKPT_TMPFS=0``: the disk): this host's disk writes ~150 MB/s with fsync, so each of the
    ~6 copies of a 1 GiB checkpoint (CRIU pages -> containerd's checkpoint blob -> the kubelet's archive ->
    the store -> the target's content store -> its snapshot -> the restore dir) cost seconds. Node-local
    fast storage (NVMe, tmpfs) is what checkpoint recovery wants; here it is memory. One filesystem for
    both nodes and the store, so the archive moves by rename and enters a content store by hard link.
    Everything in it is re-created by ``up``; ``down`` unmounts it (the memory comes back).
    """
    return cp.state / "nodes"


def store_dir(cp: hc.Layout) -> Path:
    return fast_dir(cp) / "_store"


def ensure_fast_storage(cp: hc.Layout, ws: Sequence[mn.Worker]) -> None:
    d = fast_dir(cp)
    d.mkdir(parents=True, exist_ok=True)
    if os.environ.get("HCS_CKPT_TMPFS", "1") == "0" or os.path.ismount(d):
        return
    if any(hc.alive_pid(w.lay, c) is not None for w in ws for c in ("containerd", "kubelet")):
        log(f"{d} is on the disk and its nodes run: checkpoints stay on the disk until `down` + `up`")
        return
    if any(d.iterdir()):
        if hc._mounts_under([d]):
            log(f"{d} still has mounts under it (a node not fully down): checkpoints stay on the disk")
            return
        import shutil
        shutil.rmtree(d)  # a stopped cluster's old node state on the disk: up re-creates it
        d.mkdir()
    size = os.environ.get("HCS_CKPT_TMPFS_SIZE", "12g")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "hcs-ckpt-fast", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise hc.ClusterError(f"mount -t tmpfs {d}: {r.stderr.strip()} (HCS_CKPT_TMPFS=0 keeps the disk)")
    log(f"{d}: tmpfs (size {size}) for the nodes' state and the checkpoint store")


def workers(cp: hc.Layout) -> list[mn.Worker]:
    out = []
    for i, (name, profile) in enumerate(NODES):
        lay = dataclasses.replace(cp, state=cp.state / "nodes" / name, node_name=name, bin=nodebin(),
                                  ports=dataclasses.replace(cp.ports, kubelet=10451 + i, kubelet_healthz=10461 + i))
        out.append(mn.Worker(FIRST_INDEX + i, name, profile, lay))
    return out


# ---------------------------------------------------------------- binaries
def ensure_binaries(cp: hc.Layout) -> None:
    """containerd v2.3.7 (go install from the module proxy) and the CRIU wrapper, linked into nodebin/."""
    cdir = cache() / f"containerd-{CONTAINERD_VERSION}"
    names = ("containerd", "containerd-shim-runc-v2", "ctr")
    if not all((cdir / n).exists() for n in names):
        go = hc.find_go()
        log(f"building containerd {CONTAINERD_VERSION} into {cdir} (go install; a few minutes)")
        cdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GOBIN=str(cdir), CGO_ENABLED="0")
        pkgs = [f"github.com/containerd/containerd/v2/cmd/{n}@{CONTAINERD_VERSION}" for n in names]
        r = subprocess.run(["nice", "-n", "10", go, "install", "-trimpath", "-ldflags=-s -w", *pkgs], env=env,
                           cwd=cdir, capture_output=True, text=True)
        if r.returncode != 0:
            raise hc.ClusterError(f"go install containerd {CONTAINERD_VERSION} failed: {r.stderr.strip()[-1500:]}")
    criu = criu_cache() / "bin" / "criu"
    if not criu.exists():
        r = subprocess.run([str(HERE / "criu-setup")], capture_output=True, text=True)
        if r.returncode != 0:
            raise hc.ClusterError(f"e2e/checkpoint/criu-setup failed:\n{r.stderr.strip()[-1500:]}")
    nb = nodebin()
    nb.mkdir(parents=True, exist_ok=True)
    for n in names:
        _link(nb / n, cdir / n)
    _link(nb / "criu", criu)
    for n in ("pause", "crictl"):  # e2e/cluster's images and tools, looked up in a node layout's bin dir
        _link(nb / n, cp.bin / n)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(link.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.replace(link)


WORKLOAD_IMAGE = "hcs.local/vram-counter:1"
CONTENT_SUBDIR = "io.containerd.content.v1.content"  # containerd's local content store under its root


def ensure_workload_image(ws: Sequence[mn.Worker]) -> None:
    """hcs.local/vram-counter:1: the static e2e/checkpoint/vram_counter.c, imported on every node."""
    src = HERE / "vram_counter.c"
    out_dir = cache() / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "vram_counter"
    if not binary.exists() or binary.stat().st_mtime < src.stat().st_mtime:
        r = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary) + ".tmp",
                            str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise hc.ClusterError(f"gcc -static {src} failed (needs gcc and libc6-dev): {r.stderr.strip()[-800:]}")
        os.replace(str(binary) + ".tmp", binary)
    archive = out_dir / "vram-counter.oci.tar"
    hc._oci_archive(archive, WORKLOAD_IMAGE, {"vram_counter": binary.read_bytes()}, {}, ["tmp"],
                    {"Cmd": ["/vram_counter", "64"], "Env": ["PATH=/"]})
    archives = [(archive, WORKLOAD_IMAGE), (quota_counter_image(out_dir), QUOTA_IMAGE)]
    for w in ws:
        for arch, ref in archives:
            r = hc.ctr(w.lay, "images", "import", "--snapshotter", "overlayfs", str(arch), check=False)
            if r.returncode != 0:
                raise hc.ClusterError(f"{w.name}: importing {arch} failed: {r.stderr.strip()}")
            hc.ctr(w.lay, "images", "label", ref, "io.cri-containerd.pinned=pinned", check=False)


QUOTA_IMAGE = "hcs.local/quota-counter:1"


def quota_counter_image(out_dir: Path) -> Path:
    """hcs.local/quota-counter:1: e2e/checkpoint/quota_counter.c (dynamic) with this host's glibc and
    libhcs_interceptor.so (preloaded); libcuda.so.1 and the profile come from the node's /opt/hcs (mounted)."""
    src = HERE / "quota_counter.c"
    r = subprocess.run(["make", "-s", "-C", str(REPO / "interceptor"), "all"], capture_output=True, text=True)
    if r.returncode != 0:
        raise hc.ClusterError(f"make -C interceptor failed: {r.stderr.strip()[-800:]}")
    lib = REPO / "interceptor" / "build" / "libhcs_interceptor.so"
    cuda = REPO / "driver" / "build" / "lib"
    binary = out_dir / "quota_counter"
    if not binary.exists() or binary.stat().st_mtime < src.stat().st_mtime:
        if not (cuda / "libcuda.so").exists():
            subprocess.run(["make", "-s", "-C", str(REPO / "driver")], capture_output=True, text=True)
        r = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary) + ".tmp", str(src),
                            f"-L{cuda}", "-lcuda"], capture_output=True, text=True)
        if r.returncode != 0:
            raise hc.ClusterError(f"gcc {src} failed: {r.stderr.strip()[-800:]}")
        os.replace(str(binary) + ".tmp", binary)
    files = {"quota_counter": binary.read_bytes(),
             "lib64/ld-linux-x86-64.so.2": Path("/lib64/ld-linux-x86-64.so.2").read_bytes(),
             "lib/x86_64-linux-gnu/libc.so.6": Path("/lib/x86_64-linux-gnu/libc.so.6").read_bytes(),
             "usr/lib/hcs/libhcs_interceptor.so": lib.read_bytes()}
    archive = out_dir / "quota-counter.oci.tar"
    hc._oci_archive(archive, QUOTA_IMAGE, files, {},
                    ["tmp", "lib", "lib/x86_64-linux-gnu", "lib64", "usr", "usr/lib", "usr/lib/hcs", "opt"],
                    {"Cmd": ["/quota_counter", "64"],
                     "Env": ["PATH=/", "LD_PRELOAD=/usr/lib/hcs/libhcs_interceptor.so",
                             "LD_LIBRARY_PATH=/opt/hcs/driver/lib", "HCS_SIM_PROFILE=/opt/hcs/sim/profile.json"]})
    return archive


CRIU_RUNC_CONF = Path("/etc/criu/runc.conf")
CRIU_OPTIONS = ("file-locks",)


def ensure_criu_runc_conf() -> None:
    """runc hands CRIU /etc/criu/runc.conf on every checkpoint and restore (runc's documented CRIU
    configuration file; its options override the RPC ones). ``file-locks``: the VRAM interceptor's ledger
    is a set of file locks each process of the container holds (interceptor/src/region.h); without it CRIU
    refuses to dump such a process. Lines already there are kept."""
    have = CRIU_RUNC_CONF.read_text().splitlines() if CRIU_RUNC_CONF.exists() else []
    missing = [o for o in CRIU_OPTIONS if o not in (ln.strip() for ln in have)]
    if not missing:
        return
    CRIU_RUNC_CONF.parent.mkdir(parents=True, exist_ok=True)
    head = [] if have else ["# runc passes this file to CRIU on checkpoint/restore; HCS needs file-locks "
                            "(e2e/checkpoint/cluster.py)"]
    hc.atomic_write(CRIU_RUNC_CONF, "\n".join([*have, *head, *missing]) + "\n")
    log(f"{CRIU_RUNC_CONF}: added {', '.join(missing)}")


# ---------------------------------------------------------------- configs and components
def render_node(w: mn.Worker, cp: hc.Layout) -> dict[Path, str]:
    files = mn.render_node(w, cp)
    toml = w.lay.config / "containerd.toml"
    text = files[toml]
    anchor = "  enable_cdi = true\n"
    if anchor not in text:
        raise hc.ClusterError(f"containerd.toml from e2e/cluster no longer has {anchor.strip()!r}: update "
                              "e2e/checkpoint/cluster.py")
    files[toml] = text.replace(anchor, anchor + (
        "  # containerd 2.3: restore a container whose image is a checkpoint image (removed in 2.4)\n"
        "  enable_criu = true\n  enable_experimental_restore_via_create = true\n"))
    return files


def control_plane(cp: hc.Layout) -> list[hc.Component]:
    comps = {c.name: c for c in hc.components(cp)}
    api = comps["kube-apiserver"]
    argv = mn._swap(list(api.argv), "--kubelet-preferred-address-types=",
                    "--kubelet-preferred-address-types=InternalIP")
    return [comps["etcd"], dataclasses.replace(api, argv=tuple(argv)), comps["kube-controller-manager"],
            comps["kube-scheduler"]]


def node_components(w: mn.Worker, cp: hc.Layout) -> list[hc.Component]:
    cfg = w.lay.config
    return [
        # TMPDIR: containerd dumps a checkpoint's CRIU images into a temporary directory before archiving
        # them; on the nodes' fast storage, not the host's /tmp (disk)
        hc.Component("containerd", (*w.nsenter(), "env", f"TMPDIR={w.lay.state / 'tmp'}", str(nodebin() / "containerd"),
                                    f"--config={cfg / 'containerd.toml'}"),
                     None, f"unix:{w.lay.containerd_sock}"),
        hc.Component("kubelet", (
            *w.nsenter(), str(cp.bin / "kubelet"), f"--config={cfg / 'kubelet.yaml'}",
            f"--kubeconfig={cfg / 'kubelet.kubeconfig'}", "--root-dir=/var/lib/kubelet",
            f"--hostname-override={w.name}", f"--node-ip={mn.HOST_IP}",
            f"--node-labels=hcs.io/accelerator=true,hcs.io/sim-profile={w.profile},hcs.io/checkpoint-capable=true",
            "--v=1"),
            w.lay.ports.kubelet, f"http://127.0.0.1:{w.lay.ports.kubelet_healthz}/healthz"),
    ]


def _ensure_retry(lay: hc.Layout, comp: hc.Component, digest: str) -> bool:
    """mn._ensure, retried while a just-stopped kubelet's port is still held (seen on a config change)."""
    for attempt in range(20):
        try:
            return mn._ensure(lay, comp, digest)
        except hc.ClusterError as e:
            if "already in use" not in str(e) or attempt == 19:
                raise
            time.sleep(0.5)
    return False


# ---------------------------------------------------------------- commands
def cmd_up() -> int:
    t0 = time.monotonic()
    if os.geteuid() != 0:
        raise hc.ClusterError("the checkpoint cluster needs root (kubelets, containerd, CRIU, mount namespaces)")
    cp = cp_layout()
    ws = workers(cp)
    with hc.file_lock(hc.state_lock(cp), "checkpoint cluster up/down"):
        hc.ensure_debian_packages()
        hc.build(cp)
        ensure_binaries(cp)
        ensure_criu_runc_conf()
        cp.state.mkdir(parents=True, exist_ok=True)
        hc.atomic_write(cp.state / "cluster.json", json.dumps(dict(
            cp.as_dict(), nodes=[w.name for w in ws], containerd=CONTAINERD_VERSION,
            kubelets={w.name: f"https://{mn.HOST_IP}:{w.lay.ports.kubelet}" for w in ws}), indent=1) + "\n")
        mn.ensure_pki(cp, ws)
        ensure_fast_storage(cp, ws)
        store_dir(cp).mkdir(parents=True, exist_ok=True)
        for d in (cp.logs, cp.run, cp.state / "etcd", cp.config):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(cp.state / "etcd", 0o700)
        hc.atomic_write(cp.config / "kube-scheduler.yaml", hc.scheduler_config(cp))
        mn.ensure_host_network()
        comps = {c.name: c for c in control_plane(cp)}
        mn._ensure(cp, comps["etcd"], "")
        hc.wait_healthy(cp, comps["etcd"], 60)
        mn._ensure(cp, comps["kube-apiserver"], "")
        hc.wait_healthy(cp, comps["kube-apiserver"], 180)
        for name in ("kube-controller-manager", "kube-scheduler"):
            mn._ensure(cp, comps[name], mn._digest({cp.config / "kube-scheduler.yaml":
                                                    (cp.config / "kube-scheduler.yaml").read_text()}))
        started: dict[str, float | None] = {}
        for w in ws:
            files = render_node(w, cp)
            for path, text in files.items():
                hc.atomic_write(path, text)
            for d in (w.lay.logs, w.lay.run, w.lay.state / "tmp"):
                d.mkdir(parents=True, exist_ok=True)
            mn.ensure_namespace(w, cp)
            mn.ensure_cgroups(w)
            mn.simulate_devices(w)
            nc = {c.name: c for c in node_components(w, cp)}
            mn._ensure(w.lay, nc["containerd"], mn._digest({p: t for p, t in files.items()
                                                            if p.name == "containerd.toml"}))
            hc.wait_healthy(w.lay, nc["containerd"], 30)
            hc.import_images(w.lay)
            started[w.name] = time.time() - 1 if _ensure_retry(w.lay, nc["kubelet"], mn._digest(files)) else None
        ensure_workload_image(ws)
        for name in ("kube-controller-manager", "kube-scheduler"):
            hc.wait_healthy(cp, comps[name], 60)
        deadline = time.monotonic() + 150
        for w in ws:
            while not mn.node_ready(cp, w.name, started[w.name]):
                if time.monotonic() > deadline:
                    raise hc.ClusterError(f"node {w.name} not Ready after 150 s; see {w.lay.logs}/kubelet.log:\n"
                                          + hc.log_tail(w.lay, "kubelet"))
                if hc.alive_pid(w.lay, "kubelet") is None:
                    raise hc.ClusterError(f"kubelet of {w.name} exited:\n" + hc.log_tail(w.lay, "kubelet"))
                time.sleep(0.5)
        log(f"up in {time.monotonic() - t0:.1f} s: nodes {', '.join(w.name for w in ws)} Ready "
            f"(containerd {CONTAINERD_VERSION}, criu {nodebin() / 'criu'}); export KUBECONFIG={cp.kubeconfig}")
    return 0


def cmd_status() -> int:
    cp = cp_layout()
    ok = True
    for c in control_plane(cp):
        good = hc.alive_pid(cp, c.name) is not None and hc.healthy(cp, c)
        ok = ok and good
        print(f"{c.name:25s} {'healthy' if good else 'down'}")
    for w in workers(cp):
        for c in node_components(w, cp):
            good = hc.alive_pid(w.lay, c.name) is not None and hc.healthy(w.lay, c)
            ok = ok and good
            print(f"{w.name + ' ' + c.name:25s} {'healthy' if good else 'down'}")
        if ok:
            ready = mn.node_ready(cp, w.name, None)
            ok = ok and ready
            print(f"{'node ' + w.name:25s} {'Ready' if ready else 'NotReady'}")
    print("status: " + ("up" if ok else "down"))
    return 0 if ok else 1


def cmd_down(purge: bool) -> int:
    cp = cp_layout()
    with hc.file_lock(hc.state_lock(cp), "checkpoint cluster up/down"):
        for w in workers(cp):
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
            for pid in mn._shims_of(w):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            if any(m == str(w.nsfile) for m, _ in mn._mounts()):
                subprocess.run(["umount", str(w.nsfile)], capture_output=True)
            for mp in hc._mounts_under([w.lay.state]):
                subprocess.run(["umount", "-l", mp], capture_output=True)
            if Path(f"/sys/class/net/{w.bridge}").exists():
                subprocess.run(["ip", "link", "del", w.bridge], capture_output=True)
            mn._remove_cgroups(w)
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            hc.stop(cp, name)
        nsdir = cp.state / "ns"
        if any(m == str(nsdir) for m, _ in mn._mounts()):
            subprocess.run(["umount", str(nsdir)], capture_output=True)
        if os.path.ismount(fast_dir(cp)):
            r = subprocess.run(["umount", str(fast_dir(cp))], capture_output=True, text=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(fast_dir(cp))], capture_output=True)
        # 10.98.255.1 / 10.97.0.10 on lo stay: the multi-node cluster uses them too
        if purge and cp.state.exists():
            import shutil
            shutil.rmtree(cp.state, ignore_errors=True)
            log(f"removed {cp.state}")
        log("checkpoint cluster down")
    return 0


def env_info() -> dict[str, object]:
    cp = cp_layout()
    return {"kubeconfig": str(cp.kubeconfig), "bin_dir": str(cp.bin), "nodebin": str(nodebin()),
            "dir": str(cp.state), "apiserver": f"https://127.0.0.1:{cp.ports.apiserver}",
            "nodes": {w.name: {"kubelet": f"https://{mn.HOST_IP}:{w.lay.ports.kubelet}",
                               "containerd_socket": str(w.lay.containerd_sock), "nsenter": w.nsenter(),
                               "profile": w.profile, "state": str(w.lay.state),
                               "content_dir": str(w.lay.state / "containerd" / "root" / CONTENT_SUBDIR)}
                      for w in workers(cp)},
            "store": str(store_dir(cp)),
            "pki": str(cp.pki), "busybox_image": hc.BUSYBOX_IMAGE, "workload_image": WORKLOAD_IMAGE}


def main(argv: Sequence[str]) -> int:
    cmd = argv[0] if argv else "status"
    try:
        if cmd == "up":
            return cmd_up()
        if cmd == "down":
            return cmd_down("--purge" in argv[1:])
        if cmd == "status":
            return cmd_status()
        if cmd == "env":
            if "--json" in argv[1:]:
                print(json.dumps(env_info(), indent=1))
            else:
                info = env_info()
                print(f"export KUBECONFIG={info['kubeconfig']}\nexport PATH={info['bin_dir']}:$PATH")
            return 0
        print(f"unknown command {cmd!r}: use up, down [--purge], status, env [--json]", file=sys.stderr)
        return 2
    except hc.ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
