#!/usr/bin/env python3
"""A real single-node Kubernetes from upstream Go modules, run as local processes (no Docker).

Subcommands: build, up [--no-node], down [--purge], status, env [--json].
Stdlib only, so it runs with the system python3 before the project's venv exists.
See e2e/cluster/README.md for the layout, the ports and the environment variables.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- pinned versions
K8S_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.0"  # the etcd server version k8s.io/kubernetes v1.37.2 itself requires (go.mod)
CONTAINERD_VERSION = "v2.4.2"
CRICTL_VERSION = "v1.37.0"
HELM_VERSION = "v3.22.0"
MIN_GO = (1, 26)

BUSYBOX_IMAGE = "hcs.local/busybox:1.35"
PAUSE_IMAGE = "hcs.local/pause:3.10"
DEBIAN_PACKAGES = {"runc": "/usr/sbin/runc", "containernetworking-plugins": "/usr/lib/cni/bridge",
                   "busybox-static": "/bin/busybox"}

FEATURE_GATES = {
    # DRA gates the issue asks for that are still settable in 1.37. DRAExtendedResource and
    # DRAResourceClaimDeviceStatus are GA and locked on in 1.37, DRAPrioritizedList and DRAAdminAccess too:
    # passing locked gates only produces warnings, so they are left at their (true) defaults.
    "DRAConsumableCapacity": True,
    "DRAPartitionableDevices": True,
    "DRADeviceTaints": True,
}

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GOMOD_DIR = HERE / "gomod"

_MAJOR, _MINOR = K8S_VERSION.lstrip("v").split(".")[:2]
# the version stamp Kubernetes' own build (hack/lib/version.sh) puts into every binary; without it the node
# and /version report v0.0.0-master, which breaks kubeVersion checks (helm) and version-skew logic
KUBE_LDFLAGS = "-s -w " + " ".join(
    f"-X {pkg}.{var}={val}"
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    for var, val in (("gitVersion", K8S_VERSION), ("gitMajor", _MAJOR), ("gitMinor", _MINOR),
                     ("gitCommit", "unknown"), ("gitTreeState", "clean"), ("buildDate", "1970-01-01T00:00:00Z")))
KUBE_PKGS = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "etcd": "go.etcd.io/etcd/server/v3",
}
GO_INSTALLS = {
    # group -> (binaries, packages@version)
    "containerd": (("containerd", "containerd-shim-runc-v2", "ctr"), (
        f"github.com/containerd/containerd/v2/cmd/containerd@{CONTAINERD_VERSION}",
        f"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@{CONTAINERD_VERSION}",
        f"github.com/containerd/containerd/v2/cmd/ctr@{CONTAINERD_VERSION}",
    )),
    "crictl": (("crictl",), (f"sigs.k8s.io/cri-tools/cmd/crictl@{CRICTL_VERSION}",)),
    "helm": (("helm",), (f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",)),
}


class ClusterError(Exception):
    """A failure the user can act on; the message says what, where and what to do."""


class ToolchainMissing(ClusterError):
    """The Go toolchain (or another build prerequisite) is not installed."""


def log(msg: str) -> None:
    print(f"[hcs-cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- layout
@dataclass(frozen=True)
class Ports:
    apiserver: int
    etcd_client: int
    etcd_peer: int
    controller_manager: int
    scheduler: int
    kubelet: int
    kubelet_healthz: int


@dataclass(frozen=True)
class Layout:
    cache: Path
    state: Path
    bin: Path
    kubelet_dir: Path
    node_name: str
    ports: Ports
    scheduler_config_template: Path | None

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def config(self) -> Path:
        return self.state / "config"

    @property
    def containerd_sock(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.state / "runc"

    def as_dict(self) -> dict[str, object]:
        return {
            "k8s_version": K8S_VERSION, "dir": str(self.state), "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin), "kubelet_dir": str(self.kubelet_dir), "node_name": self.node_name,
            "containerd_socket": str(self.containerd_sock), "busybox_image": BUSYBOX_IMAGE,
            "pause_image": PAUSE_IMAGE, "apiserver": f"https://127.0.0.1:{self.ports.apiserver}",
            "scheduler_config": str(self.config / "kube-scheduler.yaml"),
            "cdi_dirs": ["/etc/cdi", "/var/run/cdi"], "logs": str(self.logs),
        }


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ClusterError(f"environment variable {name}={raw!r} is not a port number; unset it or give "
                           "1-65535") from None
    if not 0 < port < 65536:
        raise ClusterError(f"environment variable {name}={port} is outside 1-65535")
    return port


def bin_key() -> str:
    h = hashlib.sha256()
    for f in (GOMOD_DIR / "go.mod", GOMOD_DIR / "go.sum"):
        h.update(f.read_bytes())
    h.update(json.dumps([CONTAINERD_VERSION, CRICTL_VERSION, HELM_VERSION, sorted(KUBE_PKGS.items()),
                         KUBE_LDFLAGS]).encode())
    return f"{K8S_VERSION}-{h.hexdigest()[:10]}"


def layout() -> Layout:
    cache = Path(os.environ.get("HCS_CLUSTER_CACHE") or Path.home() / ".cache" / "hcs" / "cluster")
    state = Path(os.environ.get("HCS_CLUSTER_DIR") or cache / "state")
    sched = os.environ.get("HCS_CLUSTER_SCHEDULER_CONFIG") or None
    return Layout(
        cache=cache.absolute(), state=state.absolute(), bin=(cache / "bin" / bin_key()).absolute(),
        kubelet_dir=Path(os.environ.get("HCS_CLUSTER_KUBELET_DIR") or "/var/lib/kubelet"),
        node_name=(os.environ.get("HCS_CLUSTER_NODE_NAME") or socket.gethostname()).lower(),
        ports=Ports(
            apiserver=_env_port("HCS_CLUSTER_APISERVER_PORT", 6443),
            etcd_client=_env_port("HCS_CLUSTER_ETCD_PORT", 2379),
            etcd_peer=_env_port("HCS_CLUSTER_ETCD_PEER_PORT", 2380),
            controller_manager=_env_port("HCS_CLUSTER_CONTROLLER_MANAGER_PORT", 10257),
            scheduler=_env_port("HCS_CLUSTER_SCHEDULER_PORT", 10259), kubelet=10250, kubelet_healthz=10248,
        ),
        scheduler_config_template=Path(sched).absolute() if sched else None,
    )


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another {what} holding {path} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------- build
def find_go() -> str:
    go = os.environ.get("HCS_GO") or shutil.which("go") or ("/usr/local/go/bin/go"
                                                          if os.access("/usr/local/go/bin/go", os.X_OK) else "")
    if not go:
        raise ToolchainMissing(
            "the Go toolchain was not found (needed once, to build Kubernetes "
            f"{K8S_VERSION} from its Go modules): install Go >= {MIN_GO[0]}.{MIN_GO[1]} and put `go` on PATH, "
            "or set HCS_GO=/path/to/go")
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False).stdout.strip()
    try:
        parts = tuple(int(p) for p in out.removeprefix("go").split(".")[:2])
    except ValueError:
        parts = (0, 0)
    if parts < MIN_GO:
        raise ToolchainMissing(f"{go} is {out or 'not a working Go'}; Kubernetes {K8S_VERSION} needs Go >= "
                               f"{MIN_GO[0]}.{MIN_GO[1]}: install a newer Go or set HCS_GO")
    return go


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _run_go(cmd: Sequence[str], cwd: Path, env: dict[str, str], label: str) -> None:
    """Run a go build/install with -v, printing a progress line every 30 s."""
    log(f"build {label}: {' '.join(cmd[:3])} ... (cold: tens of minutes on 2 cores; cached afterwards)")
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: os.nice(10))
    assert proc.stdout is not None
    tail: list[str] = []
    start = last = time.monotonic()
    for count, line in enumerate(proc.stdout, 1):
        tail = (tail + [line.rstrip()])[-40:]
        now = time.monotonic()
        if now - last >= 30:
            last = now
            log(f"build {label}: {count} packages so far, {int(now - start)} s")
    rc = proc.wait()
    if rc != 0:
        raise ClusterError(f"building {label} failed (exit {rc}); last output:\n" + "\n".join(tail) +
                           "\nFix the cause (network to the Go module proxy? disk space?) and run the command "
                           "again; finished parts are cached.")
    log(f"build {label}: done in {int(time.monotonic() - start)} s")


def _have_all(bin_dir: Path, names: Sequence[str]) -> bool:
    return all(os.access(bin_dir / n, os.X_OK) for n in names)


def build(lay: Layout) -> dict[str, object]:
    """Build every binary that is missing from the versioned cache dir; returns the build record."""
    info_path = lay.bin / "build-info.json"
    with file_lock(lay.cache / "build.lock", "build"):
        info: dict[str, object] = json.loads(info_path.read_text()) if info_path.exists() else {}
        groups: dict[str, float] = dict(info.get("groups_s", {}))  # type: ignore[arg-type]
        todo_kube = not _have_all(lay.bin, list(KUBE_PKGS))
        todo_other = [g for g, (names, _) in GO_INSTALLS.items() if not _have_all(lay.bin, names)]
        todo_pause = not os.access(lay.bin / "pause", os.X_OK)
        if not (todo_kube or todo_other or todo_pause):
            return info
        go = find_go()
        gocache = subprocess.run([go, "env", "GOCACHE"], capture_output=True, text=True).stdout.strip()
        if "gocache_bytes_before" not in info:
            info["gocache_bytes_before"] = _dir_bytes(Path(gocache)) if gocache else 0
        lay.bin.mkdir(parents=True, exist_ok=True)
        for stale in lay.bin.glob(".build-*"):  # left by an interrupted build (we hold the build lock)
            shutil.rmtree(stale, ignore_errors=True)
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-trimpath -buildvcs=false -mod=readonly")
        first = time.monotonic()
        with tempfile.TemporaryDirectory(dir=lay.bin, prefix=".build-") as tmp:
            out = Path(tmp)
            if todo_kube:
                t = time.monotonic()
                _run_go([go, "build", "-v", f"-ldflags={KUBE_LDFLAGS}", "-o", str(out) + "/", *KUBE_PKGS.values()],
                        GOMOD_DIR, env, f"kubernetes {K8S_VERSION} + etcd {ETCD_VERSION}")
                os.replace(out / "v3", out / "etcd") if (out / "v3").exists() else os.replace(out / "server",
                                                                                              out / "etcd")
                for name in KUBE_PKGS:
                    os.replace(out / name, lay.bin / name)
                groups["kube"] = round(time.monotonic() - t, 1)
            for group in todo_other:
                names, pkgs = GO_INSTALLS[group]
                t = time.monotonic()
                genv = dict(env, GOBIN=str(out), GOFLAGS="-trimpath -buildvcs=false")
                _run_go([go, "install", "-v", "-ldflags=-s -w", *pkgs], out, genv, group)
                for name in names:
                    os.replace(out / name, lay.bin / name)
                groups[group] = round(time.monotonic() - t, 1)
            if todo_pause:
                t = time.monotonic()
                _build_pause(go, out)
                os.replace(out / "pause", lay.bin / "pause")
                groups["pause"] = round(time.monotonic() - t, 1)
        if "first_build_s" not in info:
            info["first_build_s"] = round(time.monotonic() - first, 1)
        info.update(groups_s=groups, k8s_version=K8S_VERSION, etcd_version=ETCD_VERSION,
                    containerd_version=CONTAINERD_VERSION, crictl_version=CRICTL_VERSION,
                    helm_version=HELM_VERSION, built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        atomic_write(info_path, json.dumps(info, indent=1, sort_keys=True) + "\n")
        return info


def _build_pause(go: str, out: Path) -> None:
    """The pod sandbox binary, compiled from the kubernetes module's own build/pause/linux/pause.c."""
    kdir = subprocess.run([go, "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"], cwd=GOMOD_DIR,
                          capture_output=True, text=True, check=False).stdout.strip()
    src = Path(kdir) / "build" / "pause" / "linux" / "pause.c"
    if not src.exists():
        raise ClusterError(f"{src} not found: run `go mod download` in {GOMOD_DIR}")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise ToolchainMissing("no C compiler (cc/gcc) to build the pause binary: apt-get install gcc libc6-dev")
    subprocess.run([cc, "-Os", "-static", "-Wall", "-DVERSION=v3.10-hcs", "-o", str(out / "pause"), str(src)],
                   check=True)


# ---------------------------------------------------------------- system packages
def ensure_debian_packages() -> None:
    missing = [pkg for pkg, path in DEBIAN_PACKAGES.items() if not os.path.exists(path)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ToolchainMissing(f"missing system packages {missing} (files {[DEBIAN_PACKAGES[m] for m in missing]}): "
                               f"install them, e.g. `apt-get install {' '.join(missing)}`")
    log(f"installing Debian packages {missing}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise ToolchainMissing(f"apt-get install {' '.join(missing)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


# ---------------------------------------------------------------- OCI images
def _tar_add(tf: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o755,
             kind: bytes = tarfile.DIRTYPE, link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.type, ti.linkname, ti.mtime = mode, kind, link, 0
    if data is not None:
        ti.type, ti.size = tarfile.REGTYPE, len(data)
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def _oci_archive(path: Path, ref: str, layer_files: dict[str, bytes], symlinks: dict[str, str],
                 dirs: Sequence[str], config: dict[str, object]) -> None:
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in dirs:
            _tar_add(tf, d, mode=0o1777 if d == "tmp" else 0o755)
        for name, data in layer_files.items():
            _tar_add(tf, name, data=data)
        for name, target in symlinks.items():
            _tar_add(tf, name, kind=tarfile.SYMTYPE, link=target, mode=0o777)
    layer = layer_buf.getvalue()
    layer_gz = gzip.compress(layer, mtime=0)

    def digest(b: bytes) -> str:
        return "sha256:" + hashlib.sha256(b).hexdigest()

    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}, "history": [
                          {"created_by": "hcs e2e/cluster image builder"}]}, sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest(cfg), "size": len(cfg)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": digest(layer_gz), "size": len(layer_gz)}]},
                          sort_keys=True).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": digest(manifest), "size": len(manifest),
                                       "platform": {"architecture": "amd64", "os": "linux"},
                                       "annotations": {"io.containerd.image.name": ref,
                                                       "org.opencontainers.image.ref.name": ref}}]}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        _tar_add(out, "blobs")
        _tar_add(out, "blobs/sha256")
        for blob in (layer_gz, cfg, manifest):
            _tar_add(out, "blobs/sha256/" + digest(blob).split(":")[1], data=blob, mode=0o644)
        _tar_add(out, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}', mode=0o644)
        _tar_add(out, "index.json", data=index, mode=0o644)
    atomic_write(path, buf.getvalue())


def build_images(lay: Layout) -> dict[str, Path]:
    """OCI archives for busybox (Debian busybox-static) and pause; rebuilt only when missing."""
    images = {BUSYBOX_IMAGE: lay.bin / "images" / "busybox.oci.tar", PAUSE_IMAGE: lay.bin / "images" / "pause.oci.tar"}
    if not images[BUSYBOX_IMAGE].exists():
        bb = Path(DEBIAN_PACKAGES["busybox-static"]).read_bytes()
        applets = subprocess.run([DEBIAN_PACKAGES["busybox-static"], "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        links = {f"bin/{a}": "busybox" for a in applets if a and a != "busybox"}
        _oci_archive(images[BUSYBOX_IMAGE], BUSYBOX_IMAGE, {"bin/busybox": bb}, links,
                     ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "var"],
                     {"Cmd": ["sh"], "Env": ["PATH=/bin"]})
    if not images[PAUSE_IMAGE].exists():
        _oci_archive(images[PAUSE_IMAGE], PAUSE_IMAGE, {"pause": (lay.bin / "pause").read_bytes()}, {}, [],
                     {"Entrypoint": ["/pause"], "User": "65535:65535"})
    return images


# ---------------------------------------------------------------- certificates and configs
def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed in {cwd}: {r.stderr.strip()}")


def _cert(pki: Path, name: str, subj: str, *, server_sans: Sequence[str] = (), client: bool = True,
          ca: str = "ca") -> None:
    if (pki / f"{name}.crt").exists():
        return
    ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
    usages = (["serverAuth"] if server_sans else []) + (["clientAuth"] if client else [])
    ext.append("extendedKeyUsage=" + ",".join(usages))
    if server_sans:
        ext.append("subjectAltName=" + ",".join(server_sans))
    (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "3650", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt.tmp", cwd=pki)
    os.replace(pki / f"{name}.crt.tmp", pki / f"{name}.crt")


def ensure_pki(lay: Layout) -> None:
    pki = lay.pki
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    if not (pki / "ca.crt").exists():
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", "ca.key", "-out", "ca.crt.tmp", "-days", "3650", "-subj", "/CN=hcs-local-ca",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                 "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki)
        os.replace(pki / "ca.crt.tmp", pki / "ca.crt")
    if not (pki / "sa.pub").exists():
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub.tmp", cwd=pki)
        os.replace(pki / "sa.pub.tmp", pki / "sa.pub")
    if not (pki / "front-proxy-ca.crt").exists():
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", "front-proxy-ca.key", "-out", "front-proxy-ca.crt.tmp", "-days", "3650", "-subj",
                 "/CN=hcs-local-front-proxy-ca", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                 "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki)
        os.replace(pki / "front-proxy-ca.crt.tmp", pki / "front-proxy-ca.crt")
    _cert(pki, "front-proxy-client", "/CN=front-proxy-client", ca="front-proxy-ca")
    sans = ["IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local", f"DNS:{lay.node_name}"]
    _cert(pki, "apiserver", "/CN=kube-apiserver", server_sans=sans, client=False)
    _cert(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    _cert(pki, "admin", "/O=system:masters/CN=hcs-admin")
    _cert(pki, "controller-manager", "/CN=system:kube-controller-manager")
    _cert(pki, "scheduler", "/CN=system:kube-scheduler")
    _cert(pki, f"kubelet-{lay.node_name}", f"/O=system:nodes/CN=system:node:{lay.node_name}")
    server = f"https://127.0.0.1:{lay.ports.apiserver}"
    for name, cert in (("kubeconfig", "admin"), ("controller-manager.kubeconfig", "controller-manager"),
                       ("scheduler.kubeconfig", "scheduler"), ("kubelet.kubeconfig", f"kubelet-{lay.node_name}")):
        path = lay.state / name if name == "kubeconfig" else lay.config / name
        atomic_write(path, kubeconfig_text(pki, server, cert), 0o600)


def kubeconfig_text(pki: Path, server: str, cert: str) -> str:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "hcs-local", "preferences": {},
        "clusters": [{"name": "hcs-local", "cluster": {"server": server,
                                                      "certificate-authority-data": b64(pki / "ca.crt")}}],
        "users": [{"name": cert, "user": {"client-certificate-data": b64(pki / f"{cert}.crt"),
                                          "client-key-data": b64(pki / f"{cert}.key")}}],
        "contexts": [{"name": "hcs-local", "context": {"cluster": "hcs-local", "user": cert}}],
    }, indent=1) + "\n"


def gates_flag() -> str:
    return ",".join(f"{k}={str(v).lower()}" for k, v in FEATURE_GATES.items())


def scheduler_config(lay: Layout) -> str:
    if lay.scheduler_config_template is not None:
        tpl = lay.scheduler_config_template
        if not tpl.is_file():
            raise ClusterError(f"HCS_CLUSTER_SCHEDULER_CONFIG={tpl} does not exist: point it at a "
                               "KubeSchedulerConfiguration file or unset it")
        text = tpl.read_text()
        return text.replace("${HCS_CLUSTER_DIR}", str(lay.state)).replace("$HCS_CLUSTER_DIR", str(lay.state))
    return (
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
        f"clientConnection:\n  kubeconfig: {lay.config / 'scheduler.kubeconfig'}\n"
        "leaderElection:\n  leaderElect: false\n"
        "profiles:\n- schedulerName: default-scheduler\n"
    )


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def render_configs(lay: Layout) -> dict[Path, str]:
    """Every generated config file and its content."""
    cfg = lay.config
    restrict_oom = not has_cap_sys_resource()
    files: dict[Path, str] = {}
    files[cfg / "kube-scheduler.yaml"] = scheduler_config(lay)
    files[cfg / "containerd.toml"] = (f"""version = 3
root = "{lay.state / 'containerd' / 'root'}"
state = "{lay.state / 'containerd' / 'state'}"

[grpc]
  address = "{lay.containerd_sock}"

[plugins."io.containerd.cri.v1.runtime"]
  # this machine's root lacks CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj (the kubelet asks -998 for
  # sandboxes): clamp requested scores to containerd's own instead of failing every pod
  restrict_oom_score_adj = {str(restrict_oom).lower()}
  enable_cdi = true
  cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{DEBIAN_PACKAGES['runc']}"
        Root = "{lay.runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cfg / 'cni'}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
""")
    files[cfg / "cni" / "10-hcs-bridge.conflist"] = (json.dumps({
        "cniVersion": "1.0.0", "name": "hcs-pods",
        "plugins": [{"type": "bridge", "bridge": "hcs0", "isGateway": True, "ipMasq": False,
                     "hairpinMode": True,
                     "ipam": {"type": "host-local", "dataDir": str(lay.state / "cni-ipam"),
                              "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}],
    }, indent=1) + "\n")
    gates = "\n".join(f"  {k}: {str(v).lower()}" for k, v in FEATURE_GATES.items())
    files[cfg / "kubelet.yaml"] = (f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: {lay.ports.kubelet}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {lay.ports.kubelet_healthz}
containerRuntimeEndpoint: unix://{lay.containerd_sock}
cgroupDriver: cgroupfs
cgroupRoot: /
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
memorySwap: {{}}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {lay.pki / 'ca.crt'}
authorization:
  mode: Webhook
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
maxPods: 110
featureGates:
{gates}
""")
    return files


def write_configs(lay: Layout) -> None:
    for path, text in render_configs(lay).items():
        atomic_write(path, text)


# ---------------------------------------------------------------- processes
@dataclass(frozen=True)
class Component:
    name: str
    argv: tuple[str, ...]
    port: int | None
    health: str  # URL, "unix:<path>", or "" (alive is enough)


def kcm_client_flags() -> tuple[str, ...]:
    """Opt-in: HCS_CLUSTER_KCM_API_QPS / HCS_CLUSTER_KCM_API_BURST raise kube-controller-manager's client
    limits (default 20 / 30), e.g. for bench/scheduler.py's own control plane. Unset: flags unchanged, so a
    running cluster is not restarted."""
    out = []
    for env, flag in (("HCS_CLUSTER_KCM_API_QPS", "--kube-api-qps"), ("HCS_CLUSTER_KCM_API_BURST", "--kube-api-burst")):
        raw = os.environ.get(env, "")
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise ClusterError(f"environment variable {env}={raw!r}: expected a positive integer")
            out.append(f"{flag}={int(raw)}")
    return tuple(out)


def components(lay: Layout) -> list[Component]:
    b, p, pki, cfg = lay.bin, lay.ports, lay.pki, lay.config
    etcd_url = f"http://127.0.0.1:{p.etcd_client}"
    return [
        Component("etcd", (str(b / "etcd"), "--name=hcs", f"--data-dir={lay.state / 'etcd'}",
                           f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                           f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                           f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                           f"--initial-cluster=hcs=http://127.0.0.1:{p.etcd_peer}",
                           "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=2147483648"),
                  p.etcd_client, f"{etcd_url}/health"),
        Component("kube-apiserver", (
            str(b / "kube-apiserver"), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            f"--secure-port={p.apiserver}", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.96.0.0/16", "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
            "--runtime-config=resource.k8s.io/v1=true", f"--feature-gates={gates_flag()}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            f"--cert-dir={pki / 'apiserver-generated'}", "--profiling=false", "--v=1"),
            p.apiserver, f"https://127.0.0.1:{p.apiserver}/readyz"),
        Component("kube-controller-manager", (
            str(b / "kube-controller-manager"), f"--kubeconfig={cfg / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={cfg / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={cfg / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={p.controller_manager}", "--leader-elect=false",
            "--use-service-account-credentials=true", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}", "--service-cluster-ip-range=10.96.0.0/16",
            f"--feature-gates={gates_flag()}", f"--cert-dir={pki / 'kcm-generated'}", "--profiling=false",
            "--v=1", *kcm_client_flags()),
            p.controller_manager, f"https://127.0.0.1:{p.controller_manager}/healthz"),
        Component("kube-scheduler", (
            str(b / "kube-scheduler"), f"--config={cfg / 'kube-scheduler.yaml'}",
            "--bind-address=127.0.0.1", f"--secure-port={p.scheduler}", f"--feature-gates={gates_flag()}",
            f"--authentication-kubeconfig={cfg / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={cfg / 'scheduler.kubeconfig'}",
            f"--cert-dir={pki / 'scheduler-generated'}", "--v=1"),
            p.scheduler, f"https://127.0.0.1:{p.scheduler}/healthz"),
        Component("containerd", (str(b / "containerd"), f"--config={cfg / 'containerd.toml'}"),
                  None, f"unix:{lay.containerd_sock}"),
        Component("kubelet", (
            str(b / "kubelet"), f"--config={cfg / 'kubelet.yaml'}", f"--kubeconfig={cfg / 'kubelet.kubeconfig'}",
            f"--root-dir={lay.kubelet_dir}", f"--hostname-override={lay.node_name}", "--v=1"),
            p.kubelet, f"http://127.0.0.1:{p.kubelet_healthz}/healthz"),
    ]


NODE_COMPONENTS = ("containerd", "kubelet")


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _pid_record(lay: Layout, name: str) -> dict[str, object] | None:
    try:
        rec: dict[str, object] = json.loads((lay.run / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return rec


def alive_pid(lay: Layout, name: str) -> int | None:
    """The pid of our running `name`, or None (no record, or a stale record from a crashed run)."""
    rec = _pid_record(lay, name)
    if rec is None:
        return None
    pid = int(rec.get("pid", 0))  # type: ignore[call-overload]
    started = _proc_start_time(pid) if pid > 0 else None
    if started is not None and started == rec.get("start"):
        return pid
    return None


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start(lay: Layout, comp: Component, extra: dict[str, object] | None = None) -> int:
    if comp.port is not None and port_in_use(comp.port):
        raise ClusterError(
            f"cannot start {comp.name}: port {comp.port} on 127.0.0.1 is already in use by another process "
            f"(see `ss -ltnp 'sport = :{comp.port}'`). Stop that process, or if it is a leftover of an earlier "
            f"cluster run `{HERE / 'down'}`" + (" (or choose another port via HCS_CLUSTER_*_PORT)"
                                                 if comp.name in ("etcd", "kube-apiserver") else ""))
    lay.logs.mkdir(parents=True, exist_ok=True)
    lay.run.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{lay.bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")
    with open(lay.logs / f"{comp.name}.log", "ab") as logf:
        logf.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {comp.name}\n".encode())
        logf.flush()
        proc = subprocess.Popen(list(comp.argv), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=lay.state)
    rec: dict[str, object] = {"pid": proc.pid, "start": None, "argv": list(comp.argv)}
    for _ in range(50):
        rec["start"] = _proc_start_time(proc.pid)
        if rec["start"]:
            break
        time.sleep(0.01)
    rec.update(extra or {})
    atomic_write(lay.run / f"{comp.name}.pid", json.dumps(rec) + "\n")
    log(f"started {comp.name} (pid {proc.pid}, log {lay.logs / (comp.name + '.log')})")
    return proc.pid


def _client_ssl(lay: Layout) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(lay.pki / "ca.crt"))
    ctx.load_cert_chain(str(lay.pki / "admin.crt"), str(lay.pki / "admin.key"))
    return ctx


def healthy(lay: Layout, comp: Component) -> bool:
    if comp.health.startswith("unix:"):
        path = comp.health[5:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            try:
                s.connect(path)
            except OSError:
                return False
        return True
    if not comp.health:
        return True
    if comp.health.startswith(f"https://127.0.0.1:{lay.ports.apiserver}"):
        ctx = _client_ssl(lay)
    else:
        ctx = ssl._create_unverified_context()  # loopback health endpoints with self-signed serving certs
    try:
        with urllib.request.urlopen(comp.health, timeout=3, context=ctx if comp.health.startswith("https")
                                    else None) as r:
            body = r.read().decode(errors="replace")
            return r.status == 200 and (comp.name != "etcd" or '"health":"true"' in body)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def log_tail(lay: Layout, name: str, lines: int = 25) -> str:
    try:
        text = (lay.logs / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


HINTS = {
    "etcd": "If its data dir {state}/etcd is damaged (crash, disk full), `e2e/cluster/down --purge` removes the "
            "state and the next `up` starts clean.",
    "kube-apiserver": "Check that etcd is healthy and that the certificates in {state}/pki are intact; "
                      "`e2e/cluster/down --purge` regenerates everything.",
    "kubelet": "The kubelet runs as root with cgroupfs on cgroup v1; see its log for the failing check.",
}


def wait_healthy(lay: Layout, comp: Component, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(lay, comp):
            return
        if alive_pid(lay, comp.name) is None:
            raise ClusterError(f"{comp.name} exited during start-up; last log lines "
                               f"({lay.logs / (comp.name + '.log')}):\n{log_tail(lay, comp.name)}\n"
                               + HINTS.get(comp.name, "").format(state=lay.state))
        time.sleep(0.3)
    raise ClusterError(f"{comp.name} did not become healthy ({comp.health}) within {int(timeout)} s; last log "
                       f"lines ({lay.logs / (comp.name + '.log')}):\n{log_tail(lay, comp.name)}\n"
                       + HINTS.get(comp.name, "").format(state=lay.state))


def api_get(lay: Layout, path: str) -> dict[str, object]:
    url = f"https://127.0.0.1:{lay.ports.apiserver}{path}"
    with urllib.request.urlopen(url, timeout=5, context=_client_ssl(lay)) as r:
        data: dict[str, object] = json.loads(r.read())
    return data


def node_ready(lay: Layout, since: float | None = None) -> bool:
    """Node Ready; with ``since`` (epoch seconds) only a Ready heartbeat posted at or after it counts."""
    try:
        node = api_get(lay, f"/api/v1/nodes/{lay.node_name}")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    conds = node.get("status", {}).get("conditions", [])  # type: ignore[union-attr]
    for c in conds:
        if c.get("type") == "Ready" and c.get("status") == "True":
            if since is None:
                return True
            beat = time.mktime(time.strptime(c.get("lastHeartbeatTime", "1970-01-01T00:00:00Z"),
                                             "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
            return beat >= int(since) - 1
    return False


def default_account_ready(lay: Layout) -> bool:
    """The controller manager has made namespace default's ServiceAccount: until then the API server
    refuses every pod created there ("serviceaccount "default" not found")."""
    try:
        api_get(lay, "/api/v1/namespaces/default/serviceaccounts/default")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def ctr(lay: Layout, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(lay.bin / "ctr"), "--address", str(lay.containerd_sock), "-n", "k8s.io", *args],
                          capture_output=True, text=True, check=check, timeout=120)


def import_images(lay: Layout) -> None:
    have = set(ctr(lay, "images", "ls", "-q").stdout.split())
    for ref, archive in build_images(lay).items():
        if ref in have:
            continue
        r = ctr(lay, "images", "import", "--snapshotter", "overlayfs", str(archive), check=False)
        if r.returncode != 0:
            raise ClusterError(f"importing {archive} into containerd failed: {r.stderr.strip()}")
        ctr(lay, "images", "label", ref, "io.cri-containerd.pinned=pinned", check=False)
        log(f"imported image {ref}")


# ---------------------------------------------------------------- state record
def check_state(lay: Layout) -> None:
    rec_path = lay.state / "cluster.json"
    if rec_path.exists():
        try:
            rec = json.loads(rec_path.read_text())
        except ValueError:
            rec = {}
        if rec.get("k8s_version") != K8S_VERSION or rec.get("node_name") != lay.node_name:
            raise ClusterError(
                f"state dir {lay.state} belongs to another cluster (version {rec.get('k8s_version')!r}, node "
                f"{rec.get('node_name')!r}; now {K8S_VERSION}, node {lay.node_name!r}). Run "
                f"`{HERE / 'down'} --purge` to remove it, or set HCS_CLUSTER_DIR to another directory.")
    elif lay.state.exists() and any(lay.state.iterdir()):
        leftovers = sorted(p.name for p in lay.state.iterdir())
        if any(n in leftovers for n in ("etcd", "pki")):
            raise ClusterError(f"state dir {lay.state} has files ({', '.join(leftovers[:6])}) but no cluster.json: "
                               f"a crashed or foreign run. Run `{HERE / 'down'} --purge` to remove it.")
    atomic_write(rec_path, json.dumps(lay.as_dict(), indent=1) + "\n")


# ---------------------------------------------------------------- commands
def state_lock(lay: Layout) -> Path:
    return lay.state.parent / f".{lay.state.name}.lock"


def cmd_up(lay: Layout, no_node: bool) -> int:
    t0 = time.monotonic()
    comps = {c.name: c for c in components(lay)}
    wanted = [n for n in comps if not (no_node and n in NODE_COMPONENTS)]
    with file_lock(state_lock(lay), "cluster up/down"):
        try:
            rendered = render_configs(lay)
        except ClusterError:
            rendered = {}
        if rendered and all(alive_pid(lay, n) and _current(lay, comps[n], rendered) and healthy(lay, comps[n])
                            for n in wanted) and (no_node or node_ready(lay)) and default_account_ready(lay):
            log(f"already up ({lay.state}); KUBECONFIG={lay.kubeconfig}")
            return 0
        if os.geteuid() != 0 and not no_node:
            raise ClusterError("the node (kubelet + containerd + runc) needs root; run as root or use `up --no-node`")
        if len(str(lay.containerd_sock)) > 100:
            raise ClusterError(f"state dir path {lay.state} is too long for unix sockets; set HCS_CLUSTER_DIR "
                               "to a shorter path")
        if not no_node:
            ensure_debian_packages()
        build(lay)
        lay.state.mkdir(parents=True, exist_ok=True)
        check_state(lay)
        ensure_pki(lay)
        rendered = render_configs(lay)
        write_configs(lay)
        for d in (lay.logs, lay.run, lay.state / "etcd"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(lay.state / "etcd", 0o700)

        kubelet_started: float | None = None

        def ensure(name: str) -> bool:
            if alive_pid(lay, name):
                if _current(lay, comps[name], rendered):
                    return False
                log(f"{name}: binary, flags or config changed: restarting it")
                stop(lay, name)
            with contextlib.suppress(FileNotFoundError):
                (lay.run / f"{name}.pid").unlink()
            start(lay, comps[name], {"config_sha256": config_digest(lay, name, rendered)})
            return True

        if not no_node:
            ensure("containerd")
        ensure("etcd")
        wait_healthy(lay, comps["etcd"], 60)
        ensure("kube-apiserver")
        importer: threading.Thread | None = None
        import_err: list[BaseException] = []
        if not no_node:
            wait_healthy(lay, comps["containerd"], 30)

            def _imp() -> None:
                try:
                    import_images(lay)
                except BaseException as e:  # noqa: BLE001 - reported below
                    import_err.append(e)
            importer = threading.Thread(target=_imp, daemon=True)
            importer.start()
        wait_healthy(lay, comps["kube-apiserver"], 180)
        ensure("kube-controller-manager")
        ensure("kube-scheduler")
        if importer is not None:
            importer.join()
            if import_err:
                raise ClusterError(str(import_err[0]))
            if ensure("kubelet"):
                kubelet_started = time.time() - 1  # a Ready left over from before the restart must not count
            wait_healthy(lay, comps["kubelet"], 60)
        wait_healthy(lay, comps["kube-controller-manager"], 60)
        wait_healthy(lay, comps["kube-scheduler"], 60)
        if not no_node:
            deadline = time.monotonic() + 120
            while not node_ready(lay, since=kubelet_started):
                if time.monotonic() > deadline:
                    raise ClusterError(f"node {lay.node_name} registered but is not Ready after 120 s; see "
                                       f"`kubectl describe node {lay.node_name}` and {lay.logs}/kubelet.log:\n"
                                       + log_tail(lay, "kubelet"))
                if alive_pid(lay, "kubelet") is None:
                    raise ClusterError("kubelet exited; last log lines:\n" + log_tail(lay, "kubelet"))
                time.sleep(0.5)
        deadline = time.monotonic() + 60
        while not default_account_ready(lay):
            if time.monotonic() > deadline:
                raise ClusterError("ServiceAccount default/default not created 60 s after start; see "
                                   f"{lay.logs}/kube-controller-manager.log:\n"
                                   + log_tail(lay, "kube-controller-manager"))
            time.sleep(0.5)
        log(f"up in {time.monotonic() - t0:.1f} s: node {lay.node_name}"
            f"{' (control plane only)' if no_node else ' Ready'}; export KUBECONFIG={lay.kubeconfig}")
        return 0


CONFIG_FILES = {"kube-scheduler": ("kube-scheduler.yaml",), "containerd": ("containerd.toml",),
                "kubelet": ("kubelet.yaml",)}


def config_digest(lay: Layout, name: str, rendered: dict[Path, str]) -> str:
    h = hashlib.sha256()
    for f in CONFIG_FILES.get(name, ()):
        h.update(rendered[lay.config / f].encode())
    return h.hexdigest()


def _current(lay: Layout, comp: Component, rendered: dict[Path, str]) -> bool:
    """Whether the running process was started with today's binary, flags and config files."""
    rec = _pid_record(lay, comp.name)
    return rec is not None and rec.get("argv") == list(comp.argv) and \
        rec.get("config_sha256") == config_digest(lay, comp.name, rendered)


def stop(lay: Layout, name: str, timeout: float = 20) -> None:
    pid = alive_pid(lay, name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _proc_start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if _proc_start_time(pid) is not None:
            log(f"{name} (pid {pid}) did not stop in {int(timeout)} s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        log(f"stopped {name}")
    with contextlib.suppress(FileNotFoundError):
        (lay.run / f"{name}.pid").unlink()


def _our_processes(exes: Sequence[Path]) -> list[int]:
    """Pids whose executable is exactly one of `exes` (processes this tool started, e.g. containerd shims)."""
    wanted = {str(e) for e in exes}
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(d / "exe") in wanted:
                    pids.append(int(d.name))
    return pids


def _mounts_under(prefixes: Sequence[Path]) -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == str(p) or mp.startswith(str(p) + "/") for p in prefixes):
                out.append(mp)
    return sorted(set(out), key=len, reverse=True)


def cmd_down(lay: Layout, purge: bool) -> int:
    with file_lock(state_lock(lay), "cluster up/down"):
        # node-wide cleanup (pods, mounts, bridge, cgroups) only when this state dir ran a node
        had_node = any(_pid_record(lay, n) is not None for n in NODE_COMPONENTS) or \
            (lay.state / "containerd").exists()
        stop(lay, "kubelet")
        if alive_pid(lay, "containerd") and os.access(lay.bin / "crictl", os.X_OK):
            crictl = [str(lay.bin / "crictl"), "--runtime-endpoint", f"unix://{lay.containerd_sock}",
                      "--timeout", "20s"]
            r = subprocess.run([*crictl, "rmp", "--all", "--force"], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                log(f"crictl rmp: {r.stderr.strip()[:300]}")
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "containerd", "etcd"):
            stop(lay, name)
        if had_node:
            _node_cleanup(lay)
        if purge:
            for path in (lay.state, lay.kubelet_dir if had_node else None):
                if path is not None and path.exists() and path != Path("/"):
                    shutil.rmtree(path, ignore_errors=True)
                    log(f"removed {path}")
        log("down: nothing left running")
    return 0


def _node_cleanup(lay: Layout) -> None:
    """Remove what the node left behind: containers, shims, mounts, pod netns, the bridge, cgroups."""
    shims = list((lay.cache / "bin").glob("*/containerd-shim-runc-v2"))  # any cached version we ran
    runc = DEBIAN_PACKAGES["runc"]
    if lay.runc_root.is_dir() and os.access(runc, os.X_OK):
        for ns in lay.runc_root.iterdir():
            r = subprocess.run([runc, "--root", str(ns), "list", "-q"], capture_output=True, text=True)
            for cid in r.stdout.split():
                subprocess.run([runc, "--root", str(ns), "delete", "--force", cid], capture_output=True)
    for pid in _our_processes(shims):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    mounts = _mounts_under([lay.state, lay.kubelet_dir]) + [
        m for m in _mounts_under([Path("/run/netns"), Path("/var/run/netns")]) if "/cni-" in m]
    for mp in mounts:
        subprocess.run(["umount", "-l", mp], capture_output=True)
    for nsf in Path("/run/netns").glob("cni-*") if Path("/run/netns").is_dir() else []:
        with contextlib.suppress(OSError):
            nsf.unlink()
    if Path("/sys/class/net/hcs0").exists():
        subprocess.run(["ip", "link", "del", "hcs0"], capture_output=True)
    _remove_kubepods_cgroups()


def _remove_kubepods_cgroups() -> None:
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return
    for hier in root.iterdir():
        top = hier / "kubepods"
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def cmd_status(lay: Layout, quiet: bool) -> int:
    rec_path = lay.state / "cluster.json"
    ok = True
    no_node = True
    for comp in components(lay):
        pid = alive_pid(lay, comp.name)
        if comp.name in NODE_COMPONENTS and pid is None and _pid_record(lay, comp.name) is None:
            continue
        if comp.name in NODE_COMPONENTS:
            no_node = False
        good = pid is not None and healthy(lay, comp)
        ok = ok and good
        if not quiet:
            print(f"{comp.name:25s} {'healthy' if good else ('unhealthy' if pid else 'not running'):12s} "
                  f"pid={pid or '-'}")
    if ok and not no_node:
        ready = node_ready(lay)
        ok = ready
        if not quiet:
            print(f"{'node ' + lay.node_name:25s} {'Ready' if ready else 'NotReady'}")
    if not quiet:
        print(f"state {lay.state} ({'present' if rec_path.exists() else 'absent'}); kubeconfig {lay.kubeconfig}")
        print("status: " + ("up" if ok and alive_pid(lay, "etcd") else "down"))
    return 0 if ok and alive_pid(lay, "etcd") else 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hcs_cluster", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or reuse) the pinned binaries and images")
    up = sub.add_parser("up", help="start the cluster (idempotent)")
    up.add_argument("--no-node", action="store_true", help="control plane only (no kubelet/containerd)")
    up.add_argument("--workers", type=int, default=0, metavar="N",
                    help="opt-in: a separate multi-node cluster (N kubelets on this host, see multinode.py)")
    down = sub.add_parser("down", help="stop everything that up started")
    down.add_argument("--purge", action="store_true", help="also delete the state dir and the kubelet dir")
    down.add_argument("--multinode", action="store_true", help="the multi-node cluster (up --workers N)")
    st = sub.add_parser("status", help="exit 0 when the cluster is up")
    st.add_argument("-q", "--quiet", action="store_true")
    st.add_argument("--multinode", action="store_true", help="the multi-node cluster (up --workers N)")
    li = sub.add_parser("load-images", help="ctr import OCI archives into the multi-node cluster's nodes")
    li.add_argument("--multinode", action="store_true", required=True)
    li.add_argument("archives", nargs="+")
    env = sub.add_parser("env", help="print the layout (paths, ports, images)")
    env.add_argument("--json", action="store_true")
    env.add_argument("--multinode", action="store_true", help="the multi-node cluster (up --workers N)")
    args = ap.parse_args(argv)
    try:
        if getattr(args, "workers", 0) or getattr(args, "multinode", False):
            import multinode  # opt-in mode; the default single-node paths below are unchanged
            if args.cmd == "up":
                return multinode.cmd_up(args.workers)
            if args.cmd == "down":
                return multinode.cmd_down(args.purge)
            if args.cmd == "status":
                return multinode.cmd_status()
            if args.cmd == "load-images":
                return multinode.load_images(args.archives)
            if args.cmd == "env":
                d = dict(multinode.cp_layout().as_dict(), apiserver_ip=multinode.HOST_IP,
                         nodes=[w.name for w in multinode.workers(multinode.cp_layout(),
                                                                  multinode.recorded_workers(multinode.cp_layout()) or 3)])
                print(json.dumps(d, indent=1) if args.json else
                      f"export KUBECONFIG={d['kubeconfig']}\nexport PATH={d['bin_dir']}:$PATH")
                return 0
        lay = layout()
        if args.cmd == "build":
            info = build(lay)
            ensure_debian_packages()
            build_images(lay)
            print(json.dumps(info, sort_keys=True))
            return 0
        if args.cmd == "up":
            return cmd_up(lay, args.no_node)
        if args.cmd == "down":
            return cmd_down(lay, args.purge)
        if args.cmd == "status":
            return cmd_status(lay, args.quiet)
        if args.cmd == "env":
            d = lay.as_dict()
            if args.json:
                print(json.dumps(d, indent=1))
            else:
                print(f"export KUBECONFIG={d['kubeconfig']}\nexport PATH={d['bin_dir']}:$PATH")
            return 0
    except ToolchainMissing as e:
        print(f"hcs-cluster: missing prerequisite: {e}", file=sys.stderr)
        return 3
    except ClusterError as e:
        print(f"hcs-cluster: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
