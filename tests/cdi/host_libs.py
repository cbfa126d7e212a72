"""Install the simulated vendor runtime libraries at the vendors' real paths on this host, and remove them.

The CDI path must find a node's driver libraries the way ``nvidia-ctk cdi generate`` does (linker
cache, vendor install dirs) and mount them into containers; on this machine there are no vendor
drivers, so the simulated ones (driver/build/lib) stand in, installed where the real ones live:

* NVIDIA: ``libcuda.so.<driver version>`` in the multiarch lib dir, with ``ldconfig`` making the
  ``libcuda.so.1`` soname link and the cache entry (as the driver's installer does);
* Ascend: ``libascendcl.so`` in /usr/local/Ascend/driver/lib64; Hygon: ``libamdhip64.so`` in
  /opt/rocm/lib; Cambricon: ``libcnrt.so`` in /usr/local/neuware/lib64;
* the device nodes of the given devices and their vendors' control nodes, as the null device (1:3):
  harmless to open, allowed by the device cgroup; the simulated libraries never open them.

Only what did not exist is created, and exactly that is removed afterwards (and ``ldconfig`` rerun).
Only the runtime libraries are installed, not the management ones (libnvidia-ml, libdcmi, ...), so
other programs on the host that look for a vendor's management library are not affected meanwhile.

    python tests/cdi/host_libs.py install RECORD   # writes what it created to RECORD; `remove RECORD` undoes it
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIM_LIB = REPO / "driver" / "build" / "lib"
NVIDIA_DRIVER_VERSION = "550.54.15"
LIBDIR = f"/usr/lib/{platform.machine()}-linux-gnu"

#: vendor -> (simulated library, host path where the vendor installs it, the soname applications open)
INSTALL: dict[str, tuple[str, str, str]] = {
    "nvidia": ("libcuda.so.1", f"{LIBDIR}/libcuda.so.{NVIDIA_DRIVER_VERSION}", "libcuda.so.1"),
    "ascend": ("libascendcl.so", "/usr/local/Ascend/driver/lib64/libascendcl.so", "libascendcl.so"),
    "hygon": ("libamdhip64.so", "/opt/rocm/lib/libamdhip64.so", "libamdhip64.so"),
    "cambricon": ("libcnrt.so", "/usr/local/neuware/lib64/libcnrt.so", "libcnrt.so"),
}


@dataclass
class Installed:
    """What ``install`` created (removed in reverse order)."""

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        return {"files": self.files, "dirs": self.dirs, "nodes": self.nodes}


def _mkdirs(path: Path, rec: Installed) -> None:
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        rec.dirs.append(str(d))


def _ldconfig() -> None:
    subprocess.run(["ldconfig"], check=True, timeout=120)


def install(vendors: Iterable[str], device_nodes: Iterable[str]) -> Installed:
    rec = Installed()
    try:
        for v in vendors:
            src, dst, soname = INSTALL[v]
            target = Path(dst)
            _mkdirs(target.parent, rec)
            if not target.exists():
                shutil.copy(SIM_LIB / src, target)
                target.chmod(0o755)
                rec.files.append(str(target))
            link = target.parent / soname
            if link != target and not os.path.lexists(link):
                rec.files.append(str(link))  # ldconfig makes it from the library's SONAME
        for node in dict.fromkeys(device_nodes):
            p = Path(node)
            if os.path.lexists(p):
                continue
            _mkdirs(p.parent, rec)
            os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            rec.nodes.append(str(p))
        _ldconfig()
    except BaseException:
        remove(rec)
        raise
    return rec


def remove(rec: Installed) -> None:
    for f in [*rec.files, *rec.nodes]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    for d in reversed(rec.dirs):
        with contextlib.suppress(OSError):
            os.rmdir(d)
    _ldconfig()


@contextlib.contextmanager
def installed(vendors: Iterable[str], device_nodes: Iterable[str] = ()) -> Iterator[Installed]:
    rec = install(vendors, device_nodes)
    try:
        yield rec
    finally:
        remove(rec)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "install":
        rec = install(INSTALL, ())
        out = Path(argv[1])
        out.write_text(json.dumps(rec.to_json()))
        print(out)
        return 0
    if len(argv) == 2 and argv[0] == "remove":
        data = json.loads(Path(argv[1]).read_text())
        remove(Installed(files=data["files"], dirs=data["dirs"], nodes=data["nodes"]))
        return 0
    print("usage: host_libs.py install RECORD | remove RECORD", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
