"""PyTorch checks of libhcs_interceptor.so on a real GPU (run by e2e/gpu/check.sh).

  torch_check.py info <quota>      mem_get_info reports the quota; allocating past it raises OOM
  torch_check.py hold <bytes>      allocate, print a JSON line, wait for stdin to close
  torch_check.py alloc <bytes>     try to allocate, print {"ok": .., "free": .., "total": ..}
  torch_check.py train <iters>     small MLP training loop, print ms per step
One JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
import time

import torch


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
