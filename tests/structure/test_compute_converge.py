"""hcs.testing.compute_converge: the ``converge_s`` bench/compute_share.py and bench/compute_stall.py report."""

from __future__ import annotations

from hcs.testing.compute_converge import converge_windows

MS = 10**6


def _samples(rates: list[float], step_ms: int = 50, start_ns: int = 10**9) -> list[tuple[int, dict[int, int]]]:
    """Samples of pid 1 whose device time grows at ``rates[k]`` (share of wall time) in step ``k``."""
    out, t, acc = [], start_ns, 0
    for r in rates:
        t += step_ms * MS
        acc += int(r * step_ms * MS)
        out.append((t, {1: acc}))
    return out


def test_a_steady_share_converges_once_its_first_window_is_full() -> None:
    samples = _samples([0.25] * 60)
    conv, out_band, windows = converge_windows(samples, [1], [0.25], [samples[0][0]], 0.02)
    assert conv == 0.45  # the first trailing window of >= 450 ms
    assert out_band == 0 and windows > 0


def test_a_share_off_target_until_late_converges_late_and_one_never_on_target_never() -> None:
    samples = _samples([0.6] * 40 + [0.25] * 40)
    conv, _, _ = converge_windows(samples, [1], [0.25], [samples[0][0]], 0.02)
    assert 2.0 < conv < 3.0, conv
    never = _samples([0.6] * 60)
    conv, out_band, windows = converge_windows(never, [1], [0.25], [never[0][0]], 0.02)
    assert conv == (never[-1][0] - never[0][0]) / 1e9 and (out_band, windows) == (0, 0)


def test_windows_after_convergence_outside_the_band_are_counted() -> None:
    samples = _samples([0.25] * 40 + [0.6] * 20)
    _, out_band, windows = converge_windows(samples, [1], [0.25], [samples[0][0]], 0.02)
    assert 0 < out_band < windows
