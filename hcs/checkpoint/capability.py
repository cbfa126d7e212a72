"""Can a pod's device state be checkpointed? Per vendor, what the runtimes offer today.

* **Simulated runtimes** (driver/runtime): device memory is host memory of the process, so CRIU's dump
  holds it; the handles are re-read from the pod's assignment after restore. Supported.
* **NVIDIA**: ``cuda-checkpoint`` (driver >= 550) locks the process's CUDA state and moves device memory
  into host memory (``--toggle``), CRIU then dumps it; after restore ``--toggle`` moves it back onto the
  GPU. CRIU 4.x also has a CUDA plugin that calls it (not shipped in Debian's criu package). The restored
  process must land on a GPU of the same model; :func:`cuda_checkpoint_argv` is what the node runs.
  Supported when the node has ``cuda-checkpoint`` (``hcs.io/cuda-checkpoint=true`` node label).
* **Ascend (CANN), Hygon (DTK/ROCm), Cambricon (Neuware)**: no public API moves device state of a running
  process into host memory today (AMD's CRIU amdgpu plugin needs the upstream amdgpu KFD driver with
  checkpoint ioctls, which Hygon's DCU driver does not document), and CRIU cannot dump their open device
  files. The flow does not try: the pod gets a ``CheckpointUnsupported`` warning event and, on a trigger,
  is restarted from scratch on a healthy device (its own checkpoints, if the framework writes any, are
  the way to keep progress there).
"""

from __future__ import annotations

from dataclasses import dataclass

CUDA_CHECKPOINT_LABEL = "hcs.io/cuda-checkpoint"


@dataclass(frozen=True)
class Support:
    ok: bool
    how: str  # host-memory | cuda-checkpoint | none
    reason: str


def device_support(vendor: str, *, simulated: bool, node_labels: dict[str, str] | None = None) -> Support:
    if simulated:
        return Support(True, "host-memory", "simulated runtime: device memory is process host memory")
    labels = node_labels or {}
    if vendor == "nvidia":
        if labels.get(CUDA_CHECKPOINT_LABEL) == "true":
            return Support(True, "cuda-checkpoint", "cuda-checkpoint moves device memory to host memory first")
        return Support(False, "none", "node has no cuda-checkpoint (NVIDIA driver >= 550 and the "
                       f"cuda-checkpoint tool; label {CUDA_CHECKPOINT_LABEL}=true)")
    names = {"ascend": "Ascend CANN", "hygon": "Hygon DTK", "cambricon": "Cambricon Neuware"}
    return Support(False, "none", f"{names.get(vendor, vendor)} offers no way to move a running process's device "
                   "state to host memory; the workload restarts from scratch")


def cuda_checkpoint_argv(pid: int, *, tool: str = "cuda-checkpoint") -> list[str]:
    """Toggle a process between running on the GPU and checkpointed into host memory (same call both ways)."""
    return [tool, "--toggle", "--pid", str(pid)]
