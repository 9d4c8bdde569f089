"""FedBuff (Nguyen et al. 2022): asynchronous buffered aggregation.

An update trained from version b and accepted while version n is current has
staleness τ = n − b (versions published since its base, along the lineage).
It weighs ``examples × (1 + τ)^−a`` in the running sum; every K accepted
updates the server optimizer steps with the weighted mean as pseudo-gradient.
"""

from __future__ import annotations


def staleness_weight(examples: int, tau: int, exponent: float) -> float:
    if examples < 1 or tau < 0:
        raise ValueError("examples must be ≥ 1 and staleness ≥ 0")
    return float(examples) * float((1.0 + tau) ** (-exponent))


def buffer_complete(count: int, buffer_size: int) -> bool:
    return count >= buffer_size
