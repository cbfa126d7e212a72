"""Convergence of compute shares, from samples of per-process device time (bench/compute_share.py and
bench/compute_stall.py).

A sample is ``(t_ns, {pid: device_ns})``. A process has converged once its share over the trailing
500 ms (a window of at least 450 ms) stays within ``tol`` of its target for a whole second.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

Sample = tuple[int, dict[int, int]]


def trailing_rates(samples: Sequence[Sample], pid: int, window_ns: float, min_ns: float,
                   since: float) -> Iterator[tuple[int, float]]:
    """``(t_ns, share)`` of ``pid`` over the trailing ``window_ns`` at each sample from ``since`` on whose
    window spans at least ``min_ns``."""
    j = 0
    for t, d in samples:
        while samples[j][0] < t - window_ns:
            j += 1
        if t < since or t - samples[j][0] < min_ns:
            continue
        yield t, (d.get(pid, 0) - samples[j][1].get(pid, 0)) / (t - samples[j][0])


def converge_windows(samples: Sequence[Sample], pids: Sequence[int], shares: Sequence[float],
                     firsts: Sequence[int], tol: float) -> tuple[float, int, int]:
    """``(converge_s, out_band, windows)``: the slowest process's seconds from its first kernel
    (``firsts``, per pid) until it converged (to the last sample when it never did), and, after
    convergence, how many trailing windows of all processes were outside the band, of how many."""
    conv = 0.0
    out_band = 0
    n_windows = 0
    for pid, target, f in zip(pids, shares, firsts, strict=True):
        entered = None
        for t, rate in trailing_rates(samples, pid, 500e6, 450e6, f):
            ok = abs(rate - target) <= tol
            if entered is not None and t - entered >= 1e9:
                n_windows += 1
                out_band += 0 if ok else 1
                continue
            if not ok:
                entered = None
            elif entered is None:
                entered = t
        conv = max(conv, ((entered if entered is not None else samples[-1][0]) - f) / 1e9)
    return conv, out_band, n_windows
