"""The model catalog: specs per accelerator model and the A100-equivalent exchange rates.

``tflops-fp16`` is counted in A100-equivalent TFLOPS: a device offers ``rate(model) x 312``. Rates
come from the catalog's ``exchange_rates`` (keyed by a model's ``rate_key`` or its ``id``), may be
overridden by config, and default to ``fp16 / 312`` for models without a configured rate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from hcs.devices.model import Compute, Vendor
from hcs.errors import ConfigError

A100_FP16_TFLOPS = 312.0
GIB = 2**30


@dataclass(frozen=True)
class ModelSpec:
    id: str
    vendor: Vendor
    rate_key: str
    patterns: tuple[re.Pattern[str], ...]
    vram_gib: float
    fp16: float
    fp32: float
    int8: float
    pair_gbps: float
    source: str


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelSpec, ...]
    rates: Mapping[str, float]

    def with_rates(self, overrides: Mapping[str, Any] | None, *, source: str = "exchangeRates") -> Catalog:
        """A copy with configured exchange-rate overrides (keys: rate_key or model id)."""
        if not overrides:
            return self
        known = {m.rate_key for m in self.models} | {m.id for m in self.models}
        rates = dict(self.rates)
        for key, value in overrides.items():
            if str(key) not in known:
                raise ConfigError(
                    f"{source}.{key}: unknown model or rate key; known: {', '.join(sorted(known))}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{source}.{key}: rate must be a positive number, got {value!r}")
            rates[str(key)] = float(value)
        return Catalog(self.models, rates)

    def rate(self, spec: ModelSpec) -> float:
        if spec.id in self.rates:
            return self.rates[spec.id]
        if spec.rate_key in self.rates:
            return self.rates[spec.rate_key]
        return round(spec.fp16 / A100_FP16_TFLOPS, 4)

    def lookup(self, vendor: Vendor, name: str, vram_bytes: int | None = None) -> ModelSpec | None:
        """Find the catalog entry for a vendor-reported model name (and memory size)."""
        candidates = [m for m in self.models if m.vendor == vendor and any(p.search(name) for p in m.patterns)]
        if not candidates:
            return None
        if vram_bytes and len(candidates) > 1:
            return min(candidates, key=lambda m: abs(m.vram_gib * GIB - vram_bytes))
        return candidates[0]

    def by_id(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.models if m.id == model_id), None)

    def compute(self, spec: ModelSpec | None) -> Compute:
        if spec is None:
            return Compute(0.0, 0.0, 0.0, 0.0)
        return Compute(spec.fp16, spec.fp32, spec.int8, self.rate(spec))


def _parse(data: Any) -> Catalog:
    models = []
    for i, entry in enumerate(data["models"]):
        models.append(
            ModelSpec(
                id=entry["id"],
                vendor=Vendor(entry["vendor"]),
                rate_key=entry.get("rate_key", entry["id"]),
                patterns=tuple(re.compile(p, re.IGNORECASE) for p in entry["match"]),
                vram_gib=float(entry["vram_gib"]),
                fp16=float(entry["fp16"]),
                fp32=float(entry["fp32"]),
                int8=float(entry["int8"]),
                pair_gbps=float(entry.get("pair_gbps", 0)),
                source=str(entry["source"]),
            )
        )
        if not models[-1].source:
            raise ConfigError(f"catalog.yaml: models[{i}] has no source")
    return Catalog(tuple(models), {str(k): float(v) for k, v in data["exchange_rates"].items()})


@cache
def default_catalog() -> Catalog:
    text = resources.files("hcs.devices").joinpath("catalog.yaml").read_text()
    return _parse(yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
