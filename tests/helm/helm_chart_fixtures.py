"""Types shared by the chart tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: ``rendered(values_files=(), api_versions=(), **set_values)``; ``a__b=1`` sets ``a.b=1``.
Render = Callable[..., list[dict[str, Any]]]
