"""A container, as far as the VRAM quota is concerned, for tests/security/test_sec_quota_*.py.

The attacker must run the way a tenant's process does: inside a mount namespace whose files the
node agent's mounts decide, as root of that namespace but WITHOUT CAP_SYS_ADMIN (so it can neither
unmount nor remount anything), with a writable root filesystem. Mounting at /etc/ld.so.preload on
this host would affect every process of the machine, so each Container is its own mount namespace
(``unshare --mount``, private propagation) set up like a runtime sets up a container:

- ``/etc`` is an overlay (writable upper layer over the host's /etc, like an image's rootfs);
- ``/run`` (= /var/run) and ``/usr/local`` are fresh tmpfs (the image's own directories);
- then every mount the node agent asked for (AllocateResponse mounts / CDI mounts) is bind-mounted
  at its container path, read-only where the agent said so;
- every process is started with ``nsenter --mount`` + ``setpriv --bounding-set -sys_admin,...``.

Needs root (unshare/nsenter/mount); the tests skip elsewhere.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INTERCEPTOR = REPO / "interceptor"
BUILD = INTERCEPTOR / "build"
DRIVER_LIB = REPO / "driver" / "build" / "lib"
MIB = 1 << 20
#: capabilities a default (unprivileged) container does not have, or that the chart denies
DROPPED_CAPS = "-sys_admin,-sys_ptrace,-sys_module,-sys_rawio"
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

PROFILE = {
    "name": "sec-quota",
    "driver_version": "550.54.15",
    "devices": [
        {"vendor": "nvidia", "model": "NVIDIA Test GPU", "uuid": "GPU-00000000-0000-0000-0000-00000000c0de",
         "pci_bus_id": "0000:01:00.0", "memory_mib": 1024, "numa_node": 0},
    ],
}


def library() -> Path:
    """The interceptor under test (HCS_TEST_INTERCEPTOR_LIB may name another build, e.g. an older
    one, to see these tests fail against it)."""
    return Path(os.environ.get("HCS_TEST_INTERCEPTOR_LIB", str(BUILD / "libhcs_interceptor.so")))


def prerequisites() -> str:
    """'' when containers can be emulated here, else why not."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces and bind mounts)"
    for tool in ("unshare", "nsenter", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return ""


def build() -> None:
    proc = subprocess.run(["nice", "make", "-s", "-C", str(INTERCEPTOR), "all", "build/tests/t_cuda",
                           "build/tests/t_stress", "build/tests/libt_ns.so"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"make -C interceptor failed:\n{proc.stdout}\n{proc.stderr}")


@dataclass(frozen=True)
class Bind:
    host_path: str
    container_path: str
    read_only: bool = True


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> dict[str, object]:
        for line in self.out.splitlines():
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        raise AssertionError(f"no JSON line (rc={self.rc}):\n{self.out}\n{self.err}")


class Container:
    """One emulated container (a mount namespace kept alive by a sleeping init process)."""

    def __init__(self, root: Path, binds: Sequence[Bind], env: Mapping[str, str]) -> None:
        self.root = root
        self.env = dict(env)
        root.mkdir(parents=True, exist_ok=True)
        for d in ("etc-up", "etc-work"):
            (root / d).mkdir(exist_ok=True)
        lines = [
            "set -eu",
            # the image's writable rootfs: /etc as an overlay, /run and /usr/local its own dirs
            f"mount -t overlay hcs-etc -o lowerdir=/etc,upperdir={root}/etc-up,workdir={root}/etc-work /etc",
            "mount -t tmpfs hcs-run /run",
            "mount -t tmpfs hcs-usr-local /usr/local",
        ]
        for b in binds:
            target = shlex.quote(b.container_path)
            if Path(b.host_path).is_dir():
                lines.append(f"mkdir -p {target}")
            else:
                lines.append(f"mkdir -p $(dirname {target}) && {{ [ -e {target} ] || : > {target}; }}")
            lines.append(f"mount --bind {shlex.quote(b.host_path)} {target}")
            if b.read_only:
                lines.append(f"mount -o remount,bind,ro {target}")
        lines += ["echo ready", "exec sleep 1000000"]
        script = root / "setup.sh"
        script.write_text("\n".join(lines) + "\n")
        self.init = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", str(script)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.init.stdout is not None
        line = self.init.stdout.readline()
        if line.strip() != "ready":
            self.init.kill()
            raise RuntimeError(f"container setup failed: {line}{self.init.stderr.read() if self.init.stderr else ''}")

    def argv(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        # the container's environment is set inside (nsenter itself runs on the host's files)
        return ["nsenter", f"--target={self.init.pid}", "--mount", "--", "/usr/bin/env", "-i",
                *[f"{k}={v}" for k, v in env.items()], "setpriv", f"--bounding-set={DROPPED_CAPS}", "--", *argv]

    def _env(self, extra: Mapping[str, str] | None, unset: Iterable[str]) -> dict[str, str]:
        env = dict(self.env)
        env.update(extra or {})
        for k in unset:
            env.pop(k, None)
        return env

    def run(self, *argv: str, extra: Mapping[str, str] | None = None, unset: Iterable[str] = (),
            timeout: float = 120) -> Result:
        p = subprocess.run(self.argv(argv, self._env(extra, unset)), env=HOST_ENV, capture_output=True,
                           text=True, timeout=timeout, check=False)
        return Result(p.returncode, p.stdout, p.stderr)

    def sh(self, script: str, **kw: object) -> Result:
        return self.run("sh", "-c", script, **kw)  # type: ignore[arg-type]

    def popen(self, *argv: str, extra: Mapping[str, str] | None = None,
              unset: Iterable[str] = ()) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(argv, self._env(extra, unset)), env=HOST_ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def hold(self, nbytes: int, *, case: str = "hold", extra: Mapping[str, str] | None = None,
             unset: Iterable[str] = (), ordinal: int = 0) -> subprocess.Popen[str]:
        """A process of the container that allocates nbytes and keeps them (killed by close())."""
        args = [str(BUILD / "tests" / "t_cuda"), case, str(nbytes)]
        if case == "closefds_hold":
            args.append("1")
        if case == "hold_on":
            args = [str(BUILD / "tests" / "t_cuda"), case, str(ordinal), str(nbytes)]
        p = self.popen(*args, extra=extra, unset=unset)
        assert p.stdout is not None
        lines = []
        while True:
            line = p.stdout.readline()
            lines.append(line)
            if line.startswith("ready") or not line:
                break
        if not lines[-1].startswith("ready"):
            err = p.stderr.read() if p.stderr else ""
            p.kill()
            raise AssertionError(f"holder failed: {''.join(lines)}{err}")
        self._held = [*getattr(self, "_held", []), p]
        p.first_lines = lines  # type: ignore[attr-defined]
        return p

    def alloc(self, nbytes: int, **kw: object) -> dict[str, object]:
        """Allocate nbytes in a fresh process of the container: {"rc": 0|2, "free": .., "total": ..}."""
        return self.run(str(BUILD / "tests" / "t_cuda"), "alloc", str(nbytes), **kw).json()  # type: ignore[arg-type]

    def close(self) -> None:
        for p in [*getattr(self, "_held", []), self.init]:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
                p.wait(timeout=30)


def base_env(root: Path, profile_doc: dict[str, Any] | None = None) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    profile = root / "profile.json"
    profile.write_text(json.dumps(profile_doc or PROFILE))
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HCS_SIM_PROFILE": str(profile),
        "HCS_INTERCEPTOR_LOG": "1",
    }
