"""Kubernetes resource quantities (``16Gi``, ``100``, ``500m``) as exact integers.

Only what HCS needs: parse to an exact number of base units (bytes for VRAM, milli-units
for fractional values) and format back. Exact arithmetic avoids float drift at quota edges.

Parsing follows ``k8s.io/apimachinery/pkg/api/resource.ParseQuantity`` and keeps only what the API
server keeps, with bounded work whatever the input (a quantity reaches the webhook and the scheduler
extender from any tenant):

* the grammar is ``[+-]<digits>[.<digits>]`` then a binary (``Ki``..``Ei``), decimal (``n``..``E``) or
  exponent (``e<int>``/``E<int>``) suffix, ASCII digits only (no full-width or Arabic-Indic digits),
  no surrounding whitespace (``"16Gi\\n"`` is refused);
* at most :data:`MAX_CHARS` characters: the API server's own serialisation of any quantity it keeps
  is shorter (``-9223372036854775807`` is 20);
* the magnitude is at most 2^63-1 base units, the API server's maximum (it caps larger values, so a
  larger request would not mean what it says: HCS refuses it); values finer than 1n round up to 1n
  as in Kubernetes;
* exponents are checked before any power is computed: ``1e20000000`` is refused in microseconds;
* ``float`` input (JSON numbers) must be finite (no ``Infinity``/``NaN``) and in range.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from hcs.errors import QuantityError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
            "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
            "P": Fraction(10**15), "E": Fraction(10**18)}
# [0-9], not \d: \d matches every Unicode digit (full-width ０, Arabic-Indic ٣, ...). fullmatch, not $:
# $ also matches before a trailing newline.
_PATTERN = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)")

#: Longest quantity text accepted (the API server writes every quantity it keeps in fewer characters).
MAX_CHARS = 64
#: Largest magnitude in base units: Kubernetes' cap (max int64).
MAX_VALUE = 2**63 - 1
_NANO = 10**9
_HINT = "use a number with an optional suffix such as 16Gi, 512Mi, 100 or 1500m"


def _too_large(field: str, value: object) -> QuantityError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:60] + "...'"
    return QuantityError(f"{field}: {shown} is larger than the largest Kubernetes quantity (2^63-1 = {MAX_VALUE} "
                         f"base units); {_HINT}")


def _bounded(amount: Fraction, field: str, value: object) -> Fraction:
    """Round up to 1n (as Kubernetes does) and refuse magnitudes above 2^63-1."""
    if abs(amount) > MAX_VALUE:
        raise _too_large(field, value)
    if amount.denominator != 1 and (_NANO % amount.denominator):
        nanos = -(-abs(amount.numerator) * _NANO // amount.denominator)  # round away from zero, like k8s
        amount = Fraction(nanos if amount > 0 else -nanos, _NANO)
    return amount


# Complexity 17: one branch per input form (JSON integer, float, string; then the string's exponent or
# suffix), each with its own bound check, plus the hints for a string that is no quantity; read in one
# piece, the bounds that keep the work small for any input are easy to check.
def parse_quantity(value: str | int | float, *, field: str = "quantity") -> Fraction:
    """Parse a Kubernetes quantity into an exact Fraction of base units (bounded work for any input)."""
    if isinstance(value, bool):
        raise QuantityError(f"{field}: expected a quantity such as '16Gi' or '100', got {value!r}")
    if isinstance(value, int):
        if abs(value) > MAX_VALUE:
            raise QuantityError(f"{field}: integer is larger than the largest Kubernetes quantity (2^63-1 = "
                                f"{MAX_VALUE}); {_HINT}")
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"{field}: {value!r} is not a finite quantity (JSON Infinity/NaN); {_HINT}")
        if abs(value) > MAX_VALUE:
            raise _too_large(field, value)
        return _bounded(Fraction(repr(value)), field, value)
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_CHARS:
        raise QuantityError(f"{field}: quantity of {len(text)} characters is longer than the {MAX_CHARS} "
                            f"accepted (starts {text[:20]!r}); {_HINT}")
    match = _PATTERN.fullmatch(text)
    if not match:
        detail = ""
        if text != text.strip():
            detail = " (it has leading or trailing whitespace; remove it)"
        elif any(ch.isdigit() and not ("0" <= ch <= "9") for ch in text):
            detail = " (it has non-ASCII digits; write the digits 0-9)"
        elif text.strip("+-").lower() in ("inf", "infinity", "nan"):
            detail = " (Infinity and NaN are not quantities)"
        raise QuantityError(f"{field}: {text!r} is not a valid quantity{detail}; {_HINT}")
    sign, number, exponent, suffix = match.groups()
    amount = Fraction(number)  # at most MAX_CHARS digits
    if exponent is not None:
        exp = int(exponent)  # at most MAX_CHARS digits
        if amount == 0:
            return Fraction(0)
        # amount >= 10**-MAX_CHARS and < 10**MAX_CHARS: larger exponents are out of range either way,
        # so no power above 10**(2*MAX_CHARS) is ever computed
        if exp > MAX_CHARS:
            raise _too_large(field, text)
        if exp < -2 * MAX_CHARS:
            amount = Fraction(1, _NANO)  # smaller than 1n: Kubernetes rounds it up to 1n
            return -amount if sign == "-" else amount
        amount *= Fraction(10) ** exp
    elif suffix in _BINARY:
        amount *= _BINARY[suffix]
    else:
        amount *= _DECIMAL[suffix or ""]
    return _bounded(-amount if sign == "-" else amount, field, text)


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
