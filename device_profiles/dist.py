"""Distributions for profile values that vary between devices.

A value in a profile is either a plain number or a mapping such as
``{dist: lognormal, median: 0.2, sigma: 0.15}``. Every distribution accepts
optional ``min`` / ``max`` bounds (values are clipped to them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_profiles.errors import ProfileError

KINDS = ("const", "lognormal", "normal", "uniform", "choice")
# Pass as ``minimum`` for quantities that must be strictly positive.
POSITIVE = math.ulp(0.0)


def _number(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(source, key, f"expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Dist:
    """A one-dimensional distribution; ``sample`` draws from a numpy Generator."""

    kind: str
    params: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    low: float = -math.inf
    high: float = math.inf

    @classmethod
    def const(cls, value: float) -> Dist:
        return cls("const", (value,))

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "const":
            value = self.params[0]
        elif self.kind == "lognormal":
            median, sigma = self.params
            value = float(median * math.exp(sigma * rng.standard_normal()))
        elif self.kind == "normal":
            mean, sd = self.params
            value = float(mean + sd * rng.standard_normal())
        elif self.kind == "uniform":
            value = float(rng.uniform(self.params[0], self.params[1]))
        else:  # choice
            value = float(self.values[int(rng.choice(len(self.values), p=self.weights))])
        return min(max(value, self.low), self.high)

    @property
    def typical(self) -> float:
        """A representative value (median, mean or most likely), for reports."""
        if self.kind == "choice":
            return self.values[int(np.argmax(self.weights))]
        if self.kind == "uniform":
            return (self.params[0] + self.params[1]) / 2
        return min(max(self.params[0], self.low), self.high)

    def describe(self) -> str:
        bounds = ""
        if self.low > -math.inf or self.high < math.inf:
            bounds = f" in [{self.low:g}, {self.high:g}]"
        if self.kind == "const":
            return f"{self.params[0]:g}"
        if self.kind == "lognormal":
            return f"lognormal(median {self.params[0]:g}, σ {self.params[1]:g}){bounds}"
        if self.kind == "normal":
            return f"normal({self.params[0]:g} ± {self.params[1]:g}){bounds}"
        if self.kind == "uniform":
            return f"uniform({self.params[0]:g}, {self.params[1]:g})"
        pairs = ", ".join(f"{v:g}: {w:.0%}" for v, w in zip(self.values, self.weights, strict=True))
        return f"choice({pairs})"


def parse_dist(
    value: Any,
    source: str,
    key: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Dist:
    """Parse a number or a ``{dist: …}`` mapping, checking that every value it
    can produce lies in ``[minimum, maximum]``."""
    if not isinstance(value, Mapping):
        number = _number(value, source, key)
        dist = Dist.const(number)
    else:
        kind = value.get("dist")
        if kind not in KINDS:
            raise ProfileError(
                source, f"{key}.dist", f"expected one of {list(KINDS)}, got {kind!r}"
            )
        allowed = {
            "const": {"value"},
            "lognormal": {"median", "sigma"},
            "normal": {"mean", "sd"},
            "uniform": {"low", "high"},
            "choice": {"values", "weights"},
        }[kind] | {"dist", "min", "max"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ProfileError(
                source, f"{key}.{unknown[0]}",
                f"unknown key for a {kind} distribution; expected {sorted(allowed - {'dist'})}",
            )

        def need(name: str) -> float:
            if name not in value:
                raise ProfileError(source, f"{key}.{name}", f"a {kind} distribution needs {name!r}")
            return _number(value[name], source, f"{key}.{name}")

        low = _number(value["min"], source, f"{key}.min") if "min" in value else -math.inf
        high = _number(value["max"], source, f"{key}.max") if "max" in value else math.inf
        if low > high:
            raise ProfileError(source, f"{key}.min", f"min {low:g} is above max {high:g}")
        if kind == "const":
            dist = Dist("const", (need("value"),), low=low, high=high)
        elif kind == "lognormal":
            median, sigma = need("median"), need("sigma")
            if median <= 0:
                raise ProfileError(source, f"{key}.median", f"must be > 0, got {median:g}")
            if sigma < 0:
                raise ProfileError(source, f"{key}.sigma", f"must be ≥ 0, got {sigma:g}")
            dist = Dist("lognormal", (median, sigma), low=low, high=high)
        elif kind == "normal":
            mean, sd = need("mean"), need("sd")
            if sd < 0:
                raise ProfileError(source, f"{key}.sd", f"must be ≥ 0, got {sd:g}")
            dist = Dist("normal", (mean, sd), low=low, high=high)
        elif kind == "uniform":
            lo, hi = need("low"), need("high")
            if lo > hi:
                raise ProfileError(source, f"{key}.low", f"low {lo:g} is above high {hi:g}")
            dist = Dist("uniform", (lo, hi), low=low, high=high)
        else:
            values = value.get("values")
            if not isinstance(values, list) or not values:
                raise ProfileError(source, f"{key}.values", "expected a non-empty list of numbers")
            nums = tuple(_number(v, source, f"{key}.values[{i}]") for i, v in enumerate(values))
            weights = value.get("weights", [1.0] * len(nums))
            if not isinstance(weights, list) or len(weights) != len(nums):
                raise ProfileError(
                    source, f"{key}.weights", f"expected a list of {len(nums)} non-negative numbers"
                )
            ws = [_number(w, source, f"{key}.weights[{i}]") for i, w in enumerate(weights)]
            if any(w < 0 for w in ws) or sum(ws) <= 0:
                raise ProfileError(
                    source, f"{key}.weights", "weights must be ≥ 0 with a positive sum"
                )
            total = sum(ws)
            dist = Dist("choice", values=nums, weights=tuple(w / total for w in ws),
                        low=low, high=high)
    _check_range(dist, source, key, minimum, maximum)
    return dist


def _check_range(
    dist: Dist, source: str, key: str, minimum: float | None, maximum: float | None
) -> None:
    """Refuse distributions that can produce values outside the legal range,
    unless bounds clip them into it."""
    if dist.kind == "const":
        lo = hi = min(max(dist.params[0], dist.low), dist.high)
    elif dist.kind == "choice":
        lo, hi = min(dist.values), max(dist.values)
    elif dist.kind == "uniform":
        lo, hi = dist.params
    else:
        lo, hi = (math.ulp(0.0) if dist.kind == "lognormal" else -math.inf), math.inf
    lo, hi = max(lo, dist.low), min(hi, dist.high)
    if minimum == POSITIVE and lo < minimum:
        raise ProfileError(source, key, f"values must be > 0; this can produce {lo:g}")
    if minimum is not None and lo < minimum:
        raise ProfileError(
            source, key,
            f"values must be ≥ {minimum:g}; this can produce {lo:g} (add 'min: {minimum:g}')",
        )
    if maximum is not None and hi > maximum:
        raise ProfileError(
            source, key,
            f"values must be ≤ {maximum:g}; this can produce {hi:g} (add 'max: {maximum:g}')",
        )
