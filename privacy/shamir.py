"""Shamir secret sharing over the prime field GF(p), p = 2^521 − 1.

A secret of up to 64 bytes is the constant term of a random polynomial of
degree ``threshold − 1``; a share is the polynomial's value at a non-zero
point x. Any ``threshold`` shares determine the secret (Lagrange
interpolation at 0); any fewer are consistent with every possible secret
(information-theoretic secrecy).

The field is a Mersenne prime so a 32-byte key (X25519 private key, PRG seed)
always fits with room to spare; arithmetic is Python's big integers.
Coefficients come from :mod:`secrets`. This is the only cryptographic
building block fedge implements itself; everything else is ``cryptography``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from privacy.errors import SecAggError

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
MAX_SECRET_BYTES = 64


@dataclass(frozen=True)
class Share:
    """The polynomial's value ``y`` at the non-zero point ``x``."""

    x: int
    y: int

    def y_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_y_bytes(cls, x: int, data: bytes) -> Share:
        if len(data) != SHARE_BYTES:
            raise SecAggError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        y = int.from_bytes(data, "big")
        if y >= PRIME:
            raise SecAggError("share value is outside the field")
        return cls(x, y)


def _check_points(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise SecAggError("share points must be distinct")
    if any(not 0 < x < PRIME for x in xs):
        raise SecAggError("share points must be in 1 … p−1")


def _eval(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):  # Horner
        acc = (acc * x + c) % PRIME
    return acc


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the shares at ``xs``
    recover it."""
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise SecAggError(f"a secret is 1…{MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"threshold {threshold} must be between 1 and the {len(xs)} shares")
    _check_points(xs)
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    return [Share(x, _eval(coefficients, x)) for x in xs]


def interpolate(shares: Sequence[Share], at: int = 0) -> int:
    """The value at ``at`` of the unique polynomial of degree < len(shares)
    through ``shares``."""
    if not shares:
        raise SecAggError("no shares to interpolate")
    xs = [s.x for s in shares]
    _check_points(xs)
    total = 0
    for j, sj in enumerate(shares):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (at - xm) % PRIME
                den = den * (sj.x - xm) % PRIME
        total = (total + sj.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: Sequence[Share], secret_bytes: int) -> bytes:
    """The secret from exactly-enough shares (the caller chooses which).

    Wrong or too few shares give a wrong value, not an error: verify the
    result against a commitment (see :mod:`privacy.secagg`)."""
    value = interpolate(shares)
    if value >= 1 << (8 * secret_bytes):
        raise SecAggError("shares do not encode a secret of the expected size")
    return value.to_bytes(secret_bytes, "big")


def consistent(shares: Sequence[Share], threshold: int) -> bool:
    """True when every share lies on the polynomial through the first
    ``threshold`` of them."""
    if len(shares) < threshold:
        return False
    base = list(shares[:threshold])
    return all(interpolate(base, s.x) == s.y for s in shares[threshold:])
