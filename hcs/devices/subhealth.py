"""Sub-health: graded, explained device verdicts from vendor signals, with hysteresis.

Every poll a backend returns one :class:`Signals` sample per device (counters, link state, clocks,
throttle reasons, temperature, the vendor's own health). :class:`Grader` keeps a little history per
device and turns samples into a :class:`Verdict`: ``healthy`` / ``degraded`` (usable, avoid for new
long jobs) / ``failing`` (drain) / ``lost``, each with the reasons that caused it.

Hysteresis (docs/operations.md, "Sub-health"): a *rule* raises only after its condition has held
continuously for its ``hold_s`` (a single spike never raises), and a raised rule clears only after
its condition has been false for ``CLEAR_S``. Hard failures (double-bit ECC, the vendor saying
critical, a lost device) hold for 0 s. Rates are counter deltas between consecutive samples.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from hcs.devices.model import Health


class Grade(IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    FAILING = 2
    LOST = 3

    @property
    def label(self) -> str:
        return self.name.lower()


#: Health score per grade (the allocator's health weight and the device plugin read the score:
#: degraded stays schedulable but penalised, failing and lost are below HEALTHY_THRESHOLD).
GRADE_SCORE = {Grade.HEALTHY: 100, Grade.DEGRADED: 70, Grade.FAILING: 10, Grade.LOST: 0}

CLEAR_S = 30.0  # a raised rule clears after its condition has been false this long
HOLD_S = 2.0  # default: condition must hold this long before it raises


@dataclass(frozen=True)
class Signals:
    """One sample of a device's sub-health signals; ``None`` = the library does not report it."""

    vendor_health: Health = field(default_factory=Health)  # the vendor's own view (codes, Xid, ECC)
    lost: bool = False
    temperature_c: int | None = None
    ecc_sbe: int | None = None
    ecc_dbe: int | None = None
    retired_pages: int | None = None
    remap_pending: bool | None = None
    pcie_replays: int | None = None
    pcie_width: int | None = None
    pcie_max_width: int | None = None
    pcie_gen: int | None = None
    pcie_max_gen: int | None = None
    link_crc: int | None = None  # NVLink / MLU-Link CRC errors (counter)
    link_recovery: int | None = None  # link recoveries / uncorrected FEC (counter)
    link_errors_since_last: int | None = None  # xGMI error status since the last poll (0, 1, 2=several)
    throttle: frozenset[str] = frozenset()  # "thermal", "power", "hw_slowdown"
    clock_mhz: int | None = None
    max_clock_mhz: int | None = None
    straggler: str = ""  # workload-side verdict text ("" = not a straggler); see hcs.devices.workload


@dataclass(frozen=True)
class Verdict:
    grade: Grade
    reasons: tuple[str, ...] = ()
    since: float = 0.0  # clock time the grade was entered

    def health(self) -> Health:
        return Health(GRADE_SCORE[self.grade], self.reasons, self.grade.label)


@dataclass(frozen=True)
class Rule:
    """A named condition over the device's history; ``check`` returns a reason text or ``""``."""

    name: str
    grade: Grade
    hold_s: float
    check: Callable[[History], str]


@dataclass
class _Sample:
    t: float
    s: Signals


class History:
    """The last samples of one device (enough for rates and a temperature trend)."""

    def __init__(self, keep_s: float = 30.0) -> None:
        self.samples: deque[_Sample] = deque()
        self.keep_s = keep_s

    def add(self, t: float, s: Signals) -> None:
        if self.samples and t < self.samples[-1].t:  # the clock went back (simulator rewound): start over
            self.samples.clear()
        self.samples.append(_Sample(t, s))
        while len(self.samples) > 2 and t - self.samples[0].t > self.keep_s:
            self.samples.popleft()

    @property
    def last(self) -> Signals:
        return self.samples[-1].s

    def rate(self, name: str) -> float | None:
        """Counter increase per second between the last two samples (a counter reset counts as 0)."""
        if len(self.samples) < 2:
            return None
        a, b = self.samples[-2], self.samples[-1]
        va, vb = getattr(a.s, name), getattr(b.s, name)
        if va is None or vb is None or b.t <= a.t:
            return None
        return float(max(0, vb - va)) / (b.t - a.t)

    def temperature_slope(self, window_s: float = 20.0) -> float | None:
        """Least-squares °C/s over the last ``window_s``."""
        pts = [(x.t, x.s.temperature_c) for x in self.samples
               if x.s.temperature_c is not None and self.samples[-1].t - x.t <= window_s]
        if len(pts) < 5:
            return None
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        mv = sum(float(v) for _, v in pts if v is not None) / n
        den = sum((t - mt) ** 2 for t, _ in pts)
        if den <= 0:
            return None
        return float(sum((t - mt) * (float(v) - mv) for t, v in pts if v is not None) / den)


def _rate_rule(counter: str, limit: float, text: str) -> Callable[[History], str]:
    def check(h: History) -> str:
        r = h.rate(counter)
        return f"{text} {r:.1f}/s (limit {limit:g}/s)" if r is not None and r >= limit else ""
    return check


def _vendor_failing(h: History) -> str:
    v = h.last.vendor_health
    return "; ".join(v.reasons) or f"vendor health score {v.score}" if v.score < 50 else ""


def _vendor_degraded(h: History) -> str:
    v = h.last.vendor_health
    return "; ".join(v.reasons) or f"vendor health score {v.score}" if 50 <= v.score < 100 else ""


def _dbe(h: History) -> str:
    n = h.last.ecc_dbe
    return f"uncorrectable (double-bit) ECC errors: {n}" if n else ""


def _retired_many(h: History) -> str:
    n = h.last.retired_pages
    return f"{n} retired pages / remapped rows (limit {RETIRED_PAGES_FAILING})" \
        if n is not None and n >= RETIRED_PAGES_FAILING else ""


def _remap_pending(h: History) -> str:
    return "row remap / page retirement pending (needs a reset)" if h.last.remap_pending else ""


def _pcie_link(h: History) -> str:
    s = h.last
    out = []
    if s.pcie_width and s.pcie_max_width and s.pcie_width < s.pcie_max_width:
        out.append(f"PCIe link x{s.pcie_width} (of x{s.pcie_max_width})")
    if s.pcie_gen and s.pcie_max_gen and s.pcie_gen < s.pcie_max_gen:
        out.append(f"PCIe Gen{s.pcie_gen} (of Gen{s.pcie_max_gen})")
    return ", ".join(out)


def _link_status(h: History) -> str:
    n = h.last.link_errors_since_last
    return "fabric link errors in every poll (xGMI error status: several)" if n is not None and n >= 2 else ""


def _throttle(h: History) -> str:
    bad = sorted(h.last.throttle & {"thermal", "hw_slowdown"})
    return f"clocks throttled: {', '.join(bad)}" if bad else ""


def _clock_drop(h: History) -> str:
    s = h.last
    if s.clock_mhz is None or not s.max_clock_mhz:
        return ""
    pct = 100.0 * s.clock_mhz / s.max_clock_mhz
    return f"core clock {s.clock_mhz} MHz = {pct:.0f}% of max {s.max_clock_mhz} MHz" if pct < CLOCK_DROP_PCT else ""


def _temp_at(limit: int) -> Callable[[History], str]:
    def check(h: History) -> str:
        t = h.last.temperature_c
        return f"temperature {t} C at or above {limit} C" if t is not None and t >= limit else ""
    return check


def _temp_trend(h: History) -> str:
    t = h.last.temperature_c
    slope = h.temperature_slope()
    if t is None or slope is None or t < TREND_FROM_C or slope < TREND_C_PER_S:
        return ""
    return f"temperature rising {slope:.2f} C/s at {t} C"


def _straggler(h: History) -> str:
    return h.last.straggler


def _lost(h: History) -> str:
    return "device lost: the vendor library no longer reaches it" if h.last.lost else ""


SBE_DEGRADED_PER_S = 1.0
SBE_FAILING_PER_S = 20.0
RETIRED_PAGES_FAILING = 64
PCIE_REPLAY_PER_S = 2.0
LINK_CRC_PER_S = 1.0
LINK_RECOVERY_PER_S = 0.5
CLOCK_DROP_PCT = 85.0
TEMP_DEGRADED_C = 85
TEMP_FAILING_C = 95
TREND_FROM_C = 75
TREND_C_PER_S = 0.5
STRAGGLER_HOLD_S = 1.0  # the detector already takes a median over a 3 s window

RULES: tuple[Rule, ...] = (
    Rule("lost", Grade.LOST, 0.0, _lost),
    Rule("vendor-critical", Grade.FAILING, 0.0, _vendor_failing),
    Rule("ecc-dbe", Grade.FAILING, 0.0, _dbe),
    Rule("ecc-sbe-storm", Grade.FAILING, HOLD_S, _rate_rule("ecc_sbe", SBE_FAILING_PER_S,
                                                            "correctable ECC error storm")),
    Rule("retired-pages", Grade.FAILING, 0.0, _retired_many),
    Rule("temperature-critical", Grade.FAILING, HOLD_S, _temp_at(TEMP_FAILING_C)),
    Rule("vendor-warning", Grade.DEGRADED, HOLD_S, _vendor_degraded),
    Rule("ecc-sbe-rate", Grade.DEGRADED, HOLD_S, _rate_rule("ecc_sbe", SBE_DEGRADED_PER_S,
                                                            "correctable ECC errors")),
    Rule("remap-pending", Grade.DEGRADED, HOLD_S, _remap_pending),
    Rule("pcie-replay", Grade.DEGRADED, HOLD_S, _rate_rule("pcie_replays", PCIE_REPLAY_PER_S, "PCIe replays")),
    Rule("pcie-link", Grade.DEGRADED, HOLD_S, _pcie_link),
    Rule("link-crc", Grade.DEGRADED, HOLD_S, _rate_rule("link_crc", LINK_CRC_PER_S, "fabric link CRC errors")),
    Rule("link-recovery", Grade.DEGRADED, HOLD_S, _rate_rule("link_recovery", LINK_RECOVERY_PER_S,
                                                             "fabric link recoveries")),
    Rule("link-errors", Grade.DEGRADED, HOLD_S, _link_status),
    Rule("throttle", Grade.DEGRADED, HOLD_S, _throttle),
    Rule("clock-drop", Grade.DEGRADED, HOLD_S, _clock_drop),
    Rule("temperature", Grade.DEGRADED, HOLD_S, _temp_at(TEMP_DEGRADED_C)),
    Rule("temperature-trend", Grade.DEGRADED, HOLD_S, _temp_trend),
    Rule("straggler", Grade.DEGRADED, STRAGGLER_HOLD_S, _straggler),
)


@dataclass
class _RuleState:
    true_since: float | None = None
    false_since: float | None = None
    active: bool = False
    reason: str = ""


class DeviceGrader:
    """Hysteresis state of one device."""

    def __init__(self, rules: tuple[Rule, ...] = RULES, clear_s: float = CLEAR_S) -> None:
        self.rules = rules
        self.clear_s = clear_s
        self.history = History()
        self.state = {r.name: _RuleState() for r in rules}
        self.verdict = Verdict(Grade.HEALTHY)

    def observe(self, t: float, s: Signals) -> Verdict:
        if self.history.samples and t < self.history.samples[-1].t:
            self.state = {r.name: _RuleState() for r in self.rules}
        self.history.add(t, s)
        for rule in self.rules:
            st = self.state[rule.name]
            reason = rule.check(self.history)
            if reason:
                st.false_since = None
                st.reason = reason
                if st.true_since is None:
                    st.true_since = t
                if not st.active and t - st.true_since >= rule.hold_s:
                    st.active = True
            else:
                st.true_since = None
                if st.active:
                    if st.false_since is None:
                        st.false_since = t
                    if t - st.false_since >= self.clear_s:
                        st.active = False
                        st.false_since = None
        active = [(r.grade, self.state[r.name].reason) for r in self.rules if self.state[r.name].active]
        grade = max((g for g, _ in active), default=Grade.HEALTHY)
        reasons = tuple(reason for g, reason in sorted(active, key=lambda x: -x[0]))
        if grade != self.verdict.grade or reasons != self.verdict.reasons:
            since = self.verdict.since if grade == self.verdict.grade else t
            self.verdict = Verdict(grade, reasons, since)
        return self.verdict


class Grader:
    """Per-device graders keyed by device key (``nvidia-0``)."""

    def __init__(self, clear_s: float = CLEAR_S) -> None:
        self.clear_s = clear_s
        self.devices: dict[str, DeviceGrader] = {}

    def observe(self, key: str, t: float, s: Signals) -> Verdict:
        dg = self.devices.get(key)
        if dg is None:
            dg = self.devices[key] = DeviceGrader(clear_s=self.clear_s)
        return dg.observe(t, s)
