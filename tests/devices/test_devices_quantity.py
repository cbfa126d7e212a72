from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcs.errors import QuantityError
from hcs.quantity import format_bytes, parse_bytes, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16Gi", 16 * 2**30), ("512Mi", 512 * 2**20), ("1k", 1000), ("100", 100), ("1.5Gi", 3 * 2**29),
     ("1e3", 1000), ("0", 0), ("1500m", Fraction(3, 2))],
)
def test_parse_known_quantities(text, expected):
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "16GB", "Gi", "1.2.3", "abc", "16 Gi", "--1", "1Ki2"])
def test_malformed_quantities_are_rejected_with_field_name(text):
    with pytest.raises(QuantityError, match="vram"):
        parse_bytes(text, field="vram")


def test_negative_bytes_rejected():
    with pytest.raises(QuantityError, match="negative"):
        parse_bytes("-1Gi")


def test_fractional_bytes_round_up():
    assert parse_bytes("1500m") == 2


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2**62))
def test_format_then_parse_roundtrips(n):
    assert parse_bytes(format_bytes(n)) == n


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2**22), st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G"]))
def test_suffix_scaling_is_exact(n, suffix):
    scale = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}[suffix]
    assert parse_bytes(f"{n}{suffix}") == n * scale


@settings(deadline=None)
@given(st.text(max_size=12))
def test_arbitrary_text_never_crashes(text):
    try:
        parse_quantity(text)
    except QuantityError as exc:
        assert "quantity" in str(exc)
