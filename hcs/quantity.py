"""Kubernetes resource quantities (``16Gi``, ``100``, ``500m``) as exact integers.

Only what HCS needs: parse to an exact number of base units (bytes for VRAM, milli-units
for fractional values) and format back. Exact arithmetic avoids float drift at quota edges.
"""

from __future__ import annotations

import re
from fractions import Fraction

from hcs.errors import QuantityError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
            "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
            "P": Fraction(10**15), "E": Fraction(10**18)}
_PATTERN = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")


def parse_quantity(value: str | int | float, *, field: str = "quantity") -> Fraction:
    """Parse a Kubernetes quantity into an exact Fraction of base units."""
    if isinstance(value, bool):
        raise QuantityError(f"{field}: expected a quantity such as '16Gi' or '100', got {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    text = str(value).strip()
    match = _PATTERN.match(text)
    if not match:
        raise QuantityError(
            f"{field}: {value!r} is not a valid quantity; use a number with an optional suffix "
            "such as 16Gi, 512Mi, 100 or 1500m"
        )
    sign, number, exponent, suffix = match.groups()
    amount = Fraction(number)
    if exponent is not None:
        amount *= Fraction(10) ** int(exponent)
    elif suffix in _BINARY:
        amount *= _BINARY[suffix]
    else:
        amount *= _DECIMAL[suffix or ""]
    return -amount if sign == "-" else amount


def parse_bytes(value: str | int | float, *, field: str = "vram") -> int:
    """Parse a byte quantity; fractional bytes round up (Kubernetes semantics)."""
    amount = parse_quantity(value, field=field)
    if amount < 0:
        raise QuantityError(f"{field}: {value!r} is negative; byte quantities must be >= 0")
    return -(-amount.numerator // amount.denominator)


def format_bytes(n: int) -> str:
    """Format bytes as the largest exact binary suffix (``17179869184`` → ``16Gi``)."""
    for suffix, scale in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        if n and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def human_bytes(n: float) -> str:
    """Readable (rounded) binary size for tables: ``80.0Gi``."""
    value = float(n)
    for suffix in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024 or suffix == "Ti":
            return f"{value:.1f}{suffix}" if suffix else f"{int(value)}"
        value /= 1024
    return f"{value:.1f}Ti"
