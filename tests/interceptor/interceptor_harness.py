"""Helpers for the interceptor tests: build the C parts once, run the C test programs.

Each test program is run for real: the simulated vendor runtimes from driver/runtime/ are linked
into it, libhcs_interceptor.so is LD_PRELOADed, and the shared accounting region lives in a fresh
directory per test. The "asan" variant runs the AddressSanitizer + UBSan builds of both the
library and the program (libasan must come first in LD_PRELOAD).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INTERCEPTOR = REPO / "interceptor"
BUILD = INTERCEPTOR / "build"
DRIVER_LIB = REPO / "driver" / "build" / "lib"
MIB = 1 << 20

# Small simulated node: 2 NVIDIA cards of 1 GiB, one 512 MiB card of each other vendor.
PHYS_NVIDIA = 1024 * MIB
PHYS_OTHER = 512 * MIB
PROFILE = {
    "name": "interceptor-test",
    "driver_version": "550.54.15",
    "devices": [
        {"vendor": "nvidia", "model": "NVIDIA Test GPU", "uuid": "GPU-00000000-0000-0000-0000-000000000001",
         "pci_bus_id": "0000:01:00.0", "memory_mib": 1024, "numa_node": 0},
        {"vendor": "nvidia", "model": "NVIDIA Test GPU", "uuid": "GPU-00000000-0000-0000-0000-000000000002",
         "pci_bus_id": "0000:02:00.0", "memory_mib": 1024, "numa_node": 0},
        {"vendor": "ascend", "model": "Ascend910B3", "uuid": "NPU-test-0", "pci_bus_id": "0000:03:00.0",
         "memory_mib": 512, "numa_node": 0},
        {"vendor": "hygon", "model": "K100_AI", "uuid": "DCU-test-0", "pci_bus_id": "0000:04:00.0",
         "memory_mib": 512, "numa_node": 0},
        {"vendor": "cambricon", "model": "MLU370-X8", "uuid": "MLU-test-0", "pci_bus_id": "0000:05:00.0",
         "memory_mib": 512, "numa_node": 0},
    ],
}

VARIANTS = ("plain", "asan")


def build() -> None:
    """Build the library, the fault-injection and sanitizer builds, the runtimes and the programs."""
    proc = subprocess.run(
        ["nice", "make", "-s", "-C", str(INTERCEPTOR), "tests"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make -C interceptor tests failed:\n{proc.stdout}\n{proc.stderr}")


def asan_runtime() -> str:
    out = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> dict[str, object]:
        for line in self.out.splitlines():
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        raise AssertionError(f"no JSON line in output:\n{self.out}\n{self.err}")


@dataclass
class Harness:
    """Runs test programs of one build variant against one accounting directory."""

    variant: str
    shm_dir: Path
    profile: Path
    base_env: dict[str, str] = field(default_factory=dict)

    def program(self, name: str) -> str:
        sub = "asan/tests" if self.variant == "asan" else "tests"
        return str(BUILD / sub / name)

    def library(self, fault_injection: bool = False) -> str:
        if self.variant == "asan":
            return str(BUILD / "asan" / "libhcs_interceptor.so")  # always built with fault injection
        return str(BUILD / ("fi" if fault_injection else "") / "libhcs_interceptor.so")

    def env(self, preload: bool, fault_injection: bool, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "LD_PRELOAD", "ASAN_"))}
        env.update(
            HCS_SIM_PROFILE=str(self.profile),
            HCS_SHM_DIR=str(self.shm_dir),
            HCS_TEST_DRIVER_LIB=str(DRIVER_LIB),
            HCS_TEST_PHYS=str(PHYS_NVIDIA),
        )
        if self.variant == "asan":
            # leak checking stays on; fork children exit through _exit and are not checked
            env["ASAN_OPTIONS"] = "abort_on_error=0:halt_on_error=1"
            env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
        if preload:
            lib = self.library(fault_injection)
            env["LD_PRELOAD"] = f"{asan_runtime()}:{lib}" if self.variant == "asan" else lib
        env.update(self.base_env)
        env.update(extra)
        return env

    def run(self, name: str, *args: str, preload: bool = True, timeout: float = 120, **extra: str) -> Result:
        proc = subprocess.run(
            [self.program(name), *args],
            env=self.env(preload, False, extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, name: str, *args: str, preload: bool = True, fault_injection: bool = False,
              **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.program(name), *args],
            env=self.env(preload, fault_injection, extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def write_profile(path: Path) -> Path:
    path.write_text(json.dumps(PROFILE))
    return path
