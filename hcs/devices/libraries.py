"""Finding and loading vendor libraries (real ones, or the simulated ones in ``driver/build/lib``).

Search order: ``HCS_DRIVER_PATH`` (colon-separated dirs), the simulated-driver build dir when
``HCS_SIM_PROFILE`` is set, each vendor's usual install dirs, then the dynamic loader's own search.
Libraries are loaded with ``RTLD_GLOBAL`` by absolute path, so a later ``dlopen`` by soname (pynvml's
``CDLL("libnvidia-ml.so.1")``) reuses the same object.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path

from hcs.devices.model import Vendor

#: soname and the vendor's customary install dirs (reference/vendors.md).
VENDOR_LIBRARIES: dict[Vendor, tuple[str, tuple[str, ...]]] = {
    Vendor.NVIDIA: ("libnvidia-ml.so.1", ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64")),
    Vendor.ASCEND: ("libdcmi.so", ("/usr/local/Ascend/driver/lib64/driver", "/usr/local/dcmi",
                                   "/usr/local/Ascend/driver/lib64")),
    Vendor.HYGON: ("librocm_smi64.so", ("/opt/hyhal/lib", "/opt/dtk/.hyhal/rocm_smi/lib", "/opt/rocm/rocm_smi/lib",
                                        "/opt/rocm/lib")),
    Vendor.CAMBRICON: ("libcndev.so", ("/usr/local/neuware/lib64", "/usr/local/neuware/lib")),
}

_ENV_DIRS: dict[Vendor, tuple[str, ...]] = {
    Vendor.HYGON: ("ROCM_SMI_LIB_PATH",),
    Vendor.CAMBRICON: ("NEUWARE_HOME",),
}


class LibraryNotFound(Exception):
    def __init__(self, soname: str, looked_in: list[str]) -> None:
        super().__init__(f"{soname} not found (looked in: {', '.join(looked_in) or 'loader path'})")
        self.soname = soname
        self.looked_in = looked_in


@dataclass(frozen=True)
class LoadedLibrary:
    vendor: Vendor
    soname: str
    path: str
    handle: ctypes.CDLL


def simulated_lib_dir() -> Path:
    """Where ``make dev`` builds the simulated vendor libraries."""
    return Path(__file__).resolve().parents[2] / "driver" / "build" / "lib"


def search_dirs(vendor: Vendor) -> list[str]:
    dirs = [d for d in os.environ.get("HCS_DRIVER_PATH", "").split(":") if d]
    if os.environ.get("HCS_SIM_PROFILE"):
        dirs.append(str(simulated_lib_dir()))
    for env in _ENV_DIRS.get(vendor, ()):
        base = os.environ.get(env)
        if base:
            dirs += [base, os.path.join(base, "lib64"), os.path.join(base, "lib")]
    dirs += list(VENDOR_LIBRARIES[vendor][1])
    return list(dict.fromkeys(dirs))


def find_library(vendor: Vendor) -> str:
    """Absolute path of the vendor's management library, or raise LibraryNotFound."""
    soname = VENDOR_LIBRARIES[vendor][0]
    looked = search_dirs(vendor)
    for d in looked:
        candidate = os.path.join(d, soname)
        if os.path.isfile(candidate):
            return candidate
    if ctypes.util.find_library(soname.removeprefix("lib").split(".so")[0]):
        return soname  # let the loader resolve it from its cache
    raise LibraryNotFound(soname, looked)


def load_library(vendor: Vendor) -> LoadedLibrary:
    """Load the vendor library (OSError if present but unloadable)."""
    path = find_library(vendor)
    handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return LoadedLibrary(vendor, VENDOR_LIBRARIES[vendor][0], path, handle)


def require_symbols(lib: LoadedLibrary, names: tuple[str, ...]) -> None:
    """Fail early, naming the symbol, when a library lacks part of the ABI we use."""
    missing = [n for n in names if not hasattr(lib.handle, n)]
    if missing:
        raise MissingSymbol(lib, missing)


class MissingSymbol(Exception):
    def __init__(self, lib: LoadedLibrary, missing: list[str]) -> None:
        super().__init__(f"{lib.path} lacks symbol(s) {', '.join(missing)}; it is not a compatible "
                         f"{lib.vendor} driver library (update the driver, or point HCS_DRIVER_PATH elsewhere)")
