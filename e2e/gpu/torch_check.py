"""PyTorch checks of libhcs_interceptor.so on a real GPU (run by e2e/gpu/check.sh).

  torch_check.py info <quota>      mem_get_info reports the quota; allocating past it raises OOM
  torch_check.py hold <bytes>      allocate, print a JSON line, wait for stdin to close
  torch_check.py alloc <bytes>     try to allocate, print {"ok": .., "free": .., "total": ..}
  torch_check.py train <iters>     small MLP training loop, print ms per step
  torch_check.py fill <quota>      allocate 256 MiB tensors until OutOfMemoryError (run with
                                   PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True -> VMM, or
                                   backend:cudaMallocAsync -> stream-ordered pool): held to the quota,
                                   close to it, and everything comes back after empty_cache
  torch_check.py graph <quota>     capture and replay a CUDA graph (its private memory pool), then
                                   fill the rest: held to the quota
One JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

CHUNK = 256 * 2**20


def fill(dev: torch.device, quota: int, graph: bool) -> int:
    """Allocate CHUNK tensors until the allocator raises OutOfMemoryError: what was granted must stay
    within the quota and come close to it (the allocator's own rounding aside); after freeing and
    empty_cache the whole quota is free again."""
    res: dict[str, object] = {"mode": "fill", "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    _, total = torch.cuda.mem_get_info(0)
    res["total_reported"] = total
    if graph:
        x = torch.randn(2048, 2048, device=dev)
        static_in = torch.randn(2048, 2048, device=dev)
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):  # warm-up outside capture, as PyTorch requires
                (static_in @ x).relu()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            static_out = (static_in @ x).relu()
        g.replay()
        torch.cuda.synchronize()
        res["graph_replayed"] = bool(static_out.isfinite().all().item())
    held: list[torch.Tensor] = []
    refused = False
    try:
        while len(held) * CHUNK <= 2 * quota:  # a runaway loop would mean nothing is enforced
            held.append(torch.empty(CHUNK, dtype=torch.uint8, device=dev))
    except torch.cuda.OutOfMemoryError:
        refused = True
    granted = len(held) * CHUNK
    res["granted_bytes"] = granted
    res["reserved_by_torch"] = torch.cuda.memory_reserved(0)
    res["oom_raised"] = refused
    del held
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # releases VMM handles / trims the pool
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info(0)
    res["free_after_empty_cache"] = free_after
    in_use_after = torch.cuda.memory_reserved(0)
    ok = (total == quota and refused and granted <= quota and granted >= quota - 4 * CHUNK
          and free_after >= quota - in_use_after - 64 * 2**20 and res.get("graph_replayed", True) is True)
    res["pass"] = ok
    print(json.dumps(res), flush=True)
    return 0 if ok else 1


def main() -> int:
    mode, arg = sys.argv[1], int(sys.argv[2])
    dev = torch.device("cuda:0")
    if mode == "info":
        free, total = torch.cuda.mem_get_info(0)
        x = torch.empty(arg - 512 * 2**20, dtype=torch.uint8, device=dev)
        try:
            y = torch.empty(1024 * 2**20, dtype=torch.uint8, device=dev)
            over_refused = False
            del y
        except torch.cuda.OutOfMemoryError:
            over_refused = True
        free2, total2 = torch.cuda.mem_get_info(0)
        del x
        ok = total == arg and total2 == arg and over_refused and free2 < 512 * 2**20 + 1
        print(json.dumps({"mode": "torch", "pass": ok, "total_reported": total, "free_reported": free,
                          "over_quota_refused": over_refused, "free_after_alloc": free2}))
        return 0 if ok else 1
    if mode in ("hold", "alloc"):
        try:
            x = torch.empty(arg, dtype=torch.uint8, device=dev)
            ok = True
        except torch.cuda.OutOfMemoryError:
            x, ok = None, False
        free, total = torch.cuda.mem_get_info(0)
        print(json.dumps({"ok": ok, "free": free, "total": total}), flush=True)
        if mode == "hold":
            sys.stdin.read()
        del x
        return 0
    if mode in ("fill", "graph"):
        return fill(dev, arg, mode == "graph")
    if mode == "train":
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        data = torch.randn(256, 1024, device=dev)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = model(data).square().mean()
            loss.backward()
            opt.step()

        for _ in range(20):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(arg):
            step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(json.dumps({"iters": arg, "ms_per_step": dt / arg * 1e3}))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
