"""Shamir secret sharing over GF(2^521 − 1)."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy import shamir
from privacy.errors import SecAggError


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_any_threshold_shares_recover_the_secret(
    secret: bytes, n: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(min_value=1, max_value=n))
    xs = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, xs)
    subset = data.draw(st.permutations(shares)).__getitem__(slice(0, t))
    assert shamir.combine(subset, len(secret)) == secret
    assert shamir.consistent(shares, t)


def test_fewer_than_threshold_shares_do_not_give_the_secret() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 5, range(1, 9))
    wrong = shamir.interpolate(shares[:4]).to_bytes(66, "big")[-32:]
    assert wrong != secret


def test_a_changed_share_is_detected_as_inconsistent() -> None:
    shares = shamir.split(b"k" * 32, 3, [1, 2, 3, 4, 5])
    bad = [*shares[:4], shamir.Share(5, (shares[4].y + 1) % shamir.PRIME)]
    assert not shamir.consistent(bad, 3)
    assert not shamir.consistent(shares[:2], 3)


def test_share_bytes_round_trip_and_range_checks() -> None:
    share = shamir.split(b"\x01" * 32, 2, [7, 9])[0]
    assert shamir.Share.from_y_bytes(7, share.y_bytes()) == share
    with pytest.raises(SecAggError, match="66 bytes"):
        shamir.Share.from_y_bytes(7, b"\x00" * 65)
    with pytest.raises(SecAggError, match="outside the field"):
        shamir.Share.from_y_bytes(7, b"\xff" * 66)


@pytest.mark.parametrize(
    ("secret", "threshold", "xs", "message"),
    [
        (b"", 1, [1], "1…64 bytes"),
        (b"x" * 65, 1, [1], "1…64 bytes"),
        (b"x", 0, [1], "threshold 0"),
        (b"x", 3, [1, 2], "threshold 3"),
        (b"x", 2, [1, 1], "distinct"),
        (b"x", 1, [0], "1 … p−1"),
    ],
)
def test_split_refuses_bad_arguments(
    secret: bytes, threshold: int, xs: list[int], message: str
) -> None:
    with pytest.raises(SecAggError) as info:
        shamir.split(secret, threshold, xs)
    assert message in str(info.value)


def test_combine_refuses_an_oversized_value() -> None:
    shares = shamir.split(b"\xff" * 40, 2, [1, 2])
    with pytest.raises(SecAggError, match="expected size"):
        shamir.combine(shares, 32)
    with pytest.raises(SecAggError, match="no shares"):
        shamir.interpolate([])
