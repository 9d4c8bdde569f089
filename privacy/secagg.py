"""SecAgg+-style secure aggregation for synchronous rounds.

The service learns the sum of a round's updates and nothing else about any
single device's update, against an honest-but-curious server and fewer than
``threshold`` colluding neighbours of any device (Bonawitz et al. 2017,
"Practical Secure Aggregation…"; Bell et al. 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead" — the sparse-graph "SecAgg+").

Transport-agnostic: :class:`SecAggClient` and :class:`SecAggServer` are
state machines that take and return message objects; :func:`encode_message`
and :func:`decode_message` turn those into bytes. The service routes them
over HTTP; the tests route them in-process.

One round, four message exchanges::

    client                                  server
    advertise_keys() ── KeyAdvert ───────▶  receive_keys()
                                            close_keys()  (U1; k-regular graph)
    share_keys()  ◀──── RoundSetup ───────
                  ───── ShareKeys ───────▶  receive_shares()
                                            close_shares() (U2)
    masked_input() ◀─── SharesFor ────────
                   ──── MaskedInput ─────▶  receive_masked_input()
                                            close_inputs() (U3; connected?)
    unmask()      ◀──── UnmaskRequest ────
                  ───── UnmaskResponse ──▶  receive_unmask()
                                            finalize() → sum

- Keys: two X25519 pairs per device: ``c`` to encrypt shares to neighbours
  (ChaCha20-Poly1305 keyed by HKDF of the agreement), ``s`` for pairwise masks.
- Graph: a Harary graph (each device linked to k/2 on each side of a ring)
  over a permutation drawn from the round id; complete when k ≥ n − 1.
- Masks: y_u = encode(x_u) + PRG(b_u) + Σ_{v∈N(u)∩U2} ±PRG(s_uv)  (mod 2^bits),
  + when u < v. PRG = ChaCha20 keystream keyed by HKDF of the seed.
- Shares: each device Shamir-shares its self-mask seed b_u and its mask key
  s_sk_u t-of-k among its neighbours, and commits to b_u (SHA-256).
- Unmask: for each survivor the server asks for shares of b_u, for each
  device that dropped after sharing it asks for shares of s_sk_v — never both
  for one device: a client refuses a request that names a device in both
  lists or asks twice. Reconstructed secrets are checked against the
  commitment / advertised public key, which detects inconsistent shares.
- The round is abandoned (no unmask request is sent) when fewer than
  ``min_clients`` masked inputs arrive or the survivors' mask graph is not
  connected (a disconnected component's sum would be revealed on its own),
  and at finalize when some needed secret has fewer than ``threshold``
  shares — then the server holds masked vectors and fewer than t shares of
  any seed: nothing about a single input.

Fixed point: each device clips its update to L2 ≤ ``clip_norm`` (so every
coordinate is in [−C, C]) and encodes round(x · scale) mod 2^bits with
scale = (2^(bits−1) − 1 − n_max) / (n_max · C): the sum of up to
``max_clients`` encoded values can never wrap. The sum's error per
coordinate is at most n / (2 · scale).

Masked vectors are uniform in the ring: incompressible. No sparsification;
4 bytes per parameter on the wire (32-bit ring) — see docs/privacy.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import secrets
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privacy import shamir
from privacy.errors import PrivacyConfigError, ProtocolViolation, SecAggAbandoned, SecAggError

KEY_BYTES = 32

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation settings for a model's synchronous rounds.

    ``degree`` k: neighbours per device in the masking graph (even; the
    graph is complete when k ≥ n − 1). ``threshold`` t: shares needed to
    recover a device's secret; t > k/2 so that no two disjoint groups of
    honest neighbours can both reach it. ``min_clients``: fewest masked
    inputs for the round to complete. ``max_clients`` bounds the fixed-point
    scale so the ring sum never wraps.
    """

    degree: int
    threshold: int
    clip_norm: float
    max_clients: int
    min_clients: int = 3
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        w = "secagg"
        for key in ("degree", "threshold", "max_clients", "min_clients", "modulus_bits"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PrivacyConfigError(f"{w}.{key}: expected an integer, got {value!r}")
        if self.degree < 2 or self.degree % 2:
            raise PrivacyConfigError(
                f"{w}.degree: {self.degree} must be an even number ≥ 2 (k/2 neighbours on each "
                "side of a ring)"
            )
        if not self.degree // 2 < self.threshold <= self.degree:
            raise PrivacyConfigError(
                f"{w}.threshold: {self.threshold} must be more than half the degree "
                f"({self.degree} / 2) and at most the degree: fewer would let two disjoint "
                "groups of neighbours each rebuild a secret; more could never be reached"
            )
        if self.min_clients < 2:
            raise PrivacyConfigError(
                f"{w}.min_clients: {self.min_clients} must be ≥ 2 (the sum of one update is "
                "that update)"
            )
        if self.max_clients < self.min_clients:
            raise PrivacyConfigError(
                f"{w}.max_clients: {self.max_clients} is below min_clients {self.min_clients}"
            )
        if self.modulus_bits not in (32, 64):
            raise PrivacyConfigError(f"{w}.modulus_bits: {self.modulus_bits} must be 32 or 64")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise PrivacyConfigError(f"{w}.clip_norm: {self.clip_norm} must be a number > 0")
        if self.fixed_point.scale < 1.0:
            raise PrivacyConfigError(
                f"{w}: a {self.modulus_bits}-bit ring cannot hold {self.max_clients} updates of "
                f"norm {self.clip_norm} at a useful precision; use modulus_bits 64"
            )

    @property
    def fixed_point(self) -> FixedPoint:
        return FixedPoint(self.clip_norm, self.max_clients, self.modulus_bits)

    @classmethod
    def from_dict(cls, data: Any, where: str = "secagg") -> SecAggConfig:
        if not isinstance(data, Mapping):
            raise PrivacyConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise PrivacyConfigError(f"{where}: unknown key(s) {unknown}; expected {sorted(known)}")
        missing = sorted(k for k in ("degree", "threshold", "clip_norm", "max_clients")
                         if k not in data)
        if missing:
            raise PrivacyConfigError(f"{where}: missing key(s) {missing}")
        clip = data["clip_norm"]
        if isinstance(clip, bool) or not isinstance(clip, int | float):
            raise PrivacyConfigError(f"{where}.clip_norm: expected a number, got {clip!r}")
        values: dict[str, Any] = {k: (float(v) if k == "clip_norm" else v) for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def check_codec_for_secagg(codec_spec: Mapping[str, Any]) -> None:
    """Masked vectors are uniform in the ring and cannot be sparsified or
    compressed: refuse a codec that asks for it."""
    density = codec_spec.get("density", 1.0)
    if density != 1.0:
        raise PrivacyConfigError(
            f"codec.density: {density} — secure aggregation sends masked ring elements, which "
            "are uniformly random: sparsifying them would break the masks' cancellation. "
            "Set density 1.0 (secure aggregation carries its own 4-byte fixed-point encoding)"
        )


def check_mode(aggregation_mode: str) -> None:
    """The service calls this when secure aggregation is switched on."""
    if aggregation_mode != "sync":
        raise PrivacyConfigError(
            f"secagg: secure aggregation needs synchronous rounds, but the aggregation mode is "
            f"{aggregation_mode!r}. In asynchronous mode updates arrive one by one and there is "
            "no fixed group whose masks cancel; fedge does not implement buffered asynchronous "
            "secure aggregation yet (see docs/privacy.md). Use mode 'sync' or turn secagg off."
        )


@dataclass(frozen=True)
class FixedPoint:
    """Encoding of clipped float updates into Z / 2^bits.

    Each coordinate of a clipped update is in [−C, C]; with ``scale`` below,
    the sum of up to ``max_clients`` rounded values stays inside the signed
    range, so the modular sum decodes exactly to the integer sum.
    """

    clip_norm: float
    max_clients: int
    bits: int = 32

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        return np.uint32 if self.bits == 32 else np.uint64

    @property
    def scale(self) -> float:
        # n·(C·scale + ½) ≤ 2^(bits−1) − 1 ⇐ scale = (2^(bits−1) − 1 − n) / (n·C)
        n = self.max_clients
        return float((2 ** (self.bits - 1) - 1 - n) / (n * self.clip_norm))

    @property
    def resolution(self) -> float:
        """Largest rounding error of one encoded coordinate."""
        return 0.5 / self.scale

    def encode(self, vector: np.ndarray) -> np.ndarray:
        x = np.asarray(vector, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise SecAggError("cannot encode non-finite values")
        norm = float(np.sqrt(x @ x))
        if norm > self.clip_norm * (1 + 1e-6):
            raise SecAggError(
                f"update norm {norm:.6g} exceeds the clip norm {self.clip_norm:.6g}; clip first "
                "(the overflow bound depends on it)"
            )
        ints = np.rint(x * self.scale).astype(np.int64)
        return ints.astype(self.dtype)  # two's complement wrap = mod 2^bits

    def decode_sum(self, ring_sum: np.ndarray, count: int) -> np.ndarray:
        if count > self.max_clients:
            raise SecAggError(f"{count} inputs exceed max_clients {self.max_clients}")
        signed = np.asarray(ring_sum, dtype=self.dtype).view(
            np.int32 if self.bits == 32 else np.int64
        )
        return signed.astype(np.float64) / self.scale


# --------------------------------------------------------------------------- primitives


def _hkdf(secret: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def prg(seed: bytes, length: int, bits: int = 32) -> np.ndarray:
    """``length`` ring elements from a 32-byte seed: ChaCha20 keystream
    (zero nonce: each seed is used for one stream only)."""
    itemsize = bits // 8
    cipher = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    stream = cipher.update(bytes(length * itemsize))
    return np.frombuffer(stream, dtype=np.uint32 if bits == 32 else np.uint64).copy()


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def _agree(private: X25519PrivateKey, public: bytes, who: str) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise ProtocolViolation(f"bad X25519 public key from {who}: {exc}", who) from exc


def _mask_seed(shared: bytes, round_id: bytes) -> bytes:
    return _hkdf(shared, b"fedge-secagg pairwise mask|" + round_id)


def _self_seed(b: bytes, round_id: bytes) -> bytes:
    return _hkdf(b, b"fedge-secagg self mask|" + round_id)


def _commit(b: bytes, round_id: bytes, device: str) -> bytes:
    tag = b"|".join((b"fedge-secagg commit", round_id, device.encode(), b""))
    return hashlib.sha256(tag + b).digest()


def _aad(round_id: bytes, sender: str, receiver: str) -> bytes:
    return b"|".join((b"fedge-secagg share", round_id, sender.encode(), receiver.encode()))


def harary_graph(
    devices: Sequence[str], degree: int, round_id: bytes
) -> dict[str, tuple[str, ...]]:
    """A k-regular ring lattice over a permutation derived from the round id
    (public: every party can recompute it). Complete when k ≥ n − 1."""
    order = sorted(devices)
    n = len(order)
    if degree >= n - 1:
        return {d: tuple(o for o in order if o != d) for d in order}
    seed = int.from_bytes(hashlib.sha256(b"fedge-secagg graph|" + round_id).digest()[:8], "big")
    perm = [order[i] for i in np.random.default_rng(seed).permutation(n)]
    half = degree // 2
    graph: dict[str, tuple[str, ...]] = {}
    for i, d in enumerate(perm):
        graph[d] = tuple(sorted(perm[(i + j) % n] for j in range(-half, half + 1) if j != 0))
    return graph


def _connected(nodes: set[str], graph: Mapping[str, Sequence[str]]) -> bool:
    if not nodes:
        return False
    start = next(iter(nodes))
    seen, stack = {start}, [start]
    while stack:
        for nb in graph[stack.pop()]:
            if nb in nodes and nb not in seen:
                seen.add(nb)
                stack.append(nb)
    return seen == nodes


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class KeyAdvert:
    device: str
    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class NeighbourInfo:
    device: str
    x: int  # Shamir point of this neighbour
    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class RoundSetup:
    round_id: bytes
    device: str
    x: int
    vector_length: int
    config: SecAggConfig
    neighbours: tuple[NeighbourInfo, ...]


@dataclass(frozen=True)
class ShareKeys:
    device: str
    commitment: bytes
    ciphertexts: Mapping[str, bytes]  # neighbour → nonce ‖ AEAD(share of b ‖ share of s_sk)


@dataclass(frozen=True)
class SharesFor:
    device: str
    ciphertexts: Mapping[str, bytes]  # sender neighbour → its ciphertext for `device`


@dataclass(frozen=True)
class MaskedInput:
    device: str
    vector: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class UnmaskRequest:
    device: str
    survivors: tuple[str, ...]  # neighbours whose self-mask shares are wanted
    dropped: tuple[str, ...]  # neighbours whose mask-key shares are wanted
    survivor_count: int  # |U3|, the number of inputs in the sum


@dataclass(frozen=True)
class UnmaskResponse:
    device: str
    self_mask_shares: Mapping[str, bytes]  # survivor → y (66 bytes)
    key_shares: Mapping[str, bytes]  # dropped → y (66 bytes)


Message = (
    KeyAdvert | RoundSetup | ShareKeys | SharesFor | MaskedInput | UnmaskRequest | UnmaskResponse
)

_MAGIC = b"FSA1"
_TYPES: dict[type, int] = {
    KeyAdvert: 1, RoundSetup: 2, ShareKeys: 3, SharesFor: 4, MaskedInput: 5,
    UnmaskRequest: 6, UnmaskResponse: 7,
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolViolation(f"{what}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ProtocolViolation(f"{what}: bad base64") from exc


def encode_message(msg: Message) -> bytes:
    """Bytes for the wire: magic, type, JSON header length, JSON header,
    then (MaskedInput only) the raw little-endian ring elements."""
    raw = b""
    header: dict[str, Any]
    if isinstance(msg, KeyAdvert):
        header = {"device": msg.device, "c_pk": _b64(msg.c_pk), "s_pk": _b64(msg.s_pk)}
    elif isinstance(msg, RoundSetup):
        header = {
            "round_id": _b64(msg.round_id), "device": msg.device, "x": msg.x,
            "vector_length": msg.vector_length, "config": msg.config.to_dict(),
            "neighbours": [[n.device, n.x, _b64(n.c_pk), _b64(n.s_pk)] for n in msg.neighbours],
        }
    elif isinstance(msg, ShareKeys):
        header = {"device": msg.device, "commitment": _b64(msg.commitment),
                  "ciphertexts": {k: _b64(v) for k, v in msg.ciphertexts.items()}}
    elif isinstance(msg, SharesFor):
        header = {"device": msg.device,
                  "ciphertexts": {k: _b64(v) for k, v in msg.ciphertexts.items()}}
    elif isinstance(msg, MaskedInput):
        vec = np.ascontiguousarray(msg.vector)
        header = {"device": msg.device, "dtype": vec.dtype.str, "length": int(vec.size)}
        raw = vec.astype(vec.dtype.newbyteorder("<")).tobytes()
    elif isinstance(msg, UnmaskRequest):
        header = {"device": msg.device, "survivors": list(msg.survivors),
                  "dropped": list(msg.dropped), "survivor_count": msg.survivor_count}
    else:
        header = {"device": msg.device,
                  "self_mask_shares": {k: _b64(v) for k, v in msg.self_mask_shares.items()},
                  "key_shares": {k: _b64(v) for k, v in msg.key_shares.items()}}
    body = json.dumps(header, separators=(",", ":")).encode()
    return _MAGIC + struct.pack("<BI", _TYPES[type(msg)], len(body)) + body + raw


def decode_message(data: bytes, *, max_vector_length: int | None = None) -> Message:
    """Parse :func:`encode_message` output; anything malformed raises
    :class:`ProtocolViolation` (never a JSON, base64 or numpy error)."""
    if len(data) < 9 or data[:4] != _MAGIC:
        raise ProtocolViolation("not a secure aggregation message (bad magic)")
    kind, length = struct.unpack_from("<BI", data, 4)
    if 9 + length > len(data):
        raise ProtocolViolation("truncated secure aggregation message")
    try:
        h = json.loads(data[9 : 9 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolViolation(f"bad message header: {exc}") from exc
    raw = data[9 + length :]
    try:
        return _from_header(kind, h, raw, max_vector_length)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, SecAggError):
            raise
        raise ProtocolViolation(f"bad message fields: {exc!r}") from exc


def _str_map(value: Any, what: str) -> dict[str, bytes]:
    if not isinstance(value, dict):
        raise ProtocolViolation(f"{what}: expected an object")
    return {str(k): _unb64(v, what) for k, v in value.items()}


def _from_header(kind: int, h: Any, raw: bytes, max_len: int | None) -> Message:
    if not isinstance(h, dict) or not isinstance(h.get("device"), str):
        raise ProtocolViolation("message header must be an object with a device")
    if kind != 5 and raw:
        raise ProtocolViolation("unexpected trailing bytes")
    device = h["device"]
    if kind == 1:
        return KeyAdvert(device, _unb64(h["c_pk"], "c_pk"), _unb64(h["s_pk"], "s_pk"))
    if kind == 2:
        neighbours = tuple(
            NeighbourInfo(str(d), int(x), _unb64(c, "c_pk"), _unb64(s, "s_pk"))
            for d, x, c, s in h["neighbours"]
        )
        return RoundSetup(_unb64(h["round_id"], "round_id"), device, int(h["x"]),
                          int(h["vector_length"]), SecAggConfig.from_dict(h["config"]), neighbours)
    if kind == 3:
        return ShareKeys(device, _unb64(h["commitment"], "commitment"),
                         _str_map(h["ciphertexts"], "ciphertexts"))
    if kind == 4:
        return SharesFor(device, _str_map(h["ciphertexts"], "ciphertexts"))
    if kind == 5:
        dtype = np.dtype(h["dtype"])
        if dtype not in (np.dtype("<u4"), np.dtype("<u8")):
            raise ProtocolViolation(f"masked vector dtype {dtype} is not a ring element type")
        n = int(h["length"])
        if n < 0 or (max_len is not None and n > max_len) or len(raw) != n * dtype.itemsize:
            raise ProtocolViolation(
                f"masked vector from {device}: header says {n} elements, body has "
                f"{len(raw)} bytes", device
            )
        return MaskedInput(device, np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")))
    if kind == 6:
        return UnmaskRequest(device, tuple(map(str, h["survivors"])),
                             tuple(map(str, h["dropped"])), int(h["survivor_count"]))
    if kind == 7:
        return UnmaskResponse(device, _str_map(h["self_mask_shares"], "self_mask_shares"),
                              _str_map(h["key_shares"], "key_shares"))
    raise ProtocolViolation(f"unknown message type {kind}")


# --------------------------------------------------------------------------- client


class ClientState(Enum):
    NEW = "new"  # nothing sent
    KEYS_ADVERTISED = "keys_advertised"  # public keys sent
    SHARES_SENT = "shares_sent"  # encrypted shares sent
    INPUT_SENT = "input_sent"  # masked input sent
    DONE = "done"  # unmask shares sent: the round is over for this device
    ABORTED = "aborted"  # refused to continue (a protocol violation was seen)


class SecAggClient:
    """One device's side of one round. Create a new one per round."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.state = ClientState.NEW
        self._c = X25519PrivateKey.generate()
        self._s = X25519PrivateKey.generate()
        self._b = secrets.token_bytes(KEY_BYTES)
        self._setup: RoundSetup | None = None
        self._neighbours: dict[str, NeighbourInfo] = {}
        self._held: dict[str, tuple[shamir.Share, shamir.Share]] = {}  # from u: (b share, sk share)

    def _expect(self, state: ClientState, action: str) -> None:
        if self.state is not state:
            raise ProtocolViolation(
                f"{self.device}: cannot {action} in state {self.state.value} "
                f"(expected {state.value})"
            )

    def _fail(self, message: str, culprit: str | None) -> ProtocolViolation:
        self.state = ClientState.ABORTED
        return ProtocolViolation(message, culprit)

    def advertise_keys(self) -> KeyAdvert:
        self._expect(ClientState.NEW, "advertise keys")
        self.state = ClientState.KEYS_ADVERTISED
        return KeyAdvert(self.device, _public_bytes(self._c), _public_bytes(self._s))

    def share_keys(self, setup: RoundSetup) -> ShareKeys:
        self._expect(ClientState.KEYS_ADVERTISED, "share keys")
        if setup.device != self.device:
            raise self._fail(f"setup addressed to {setup.device}, not {self.device}", None)
        k = len(setup.neighbours)
        names = [n.device for n in setup.neighbours]
        if len(set(names)) != k or self.device in names:
            raise self._fail("setup lists a neighbour twice or lists this device", None)
        cfg = setup.config
        if k < cfg.threshold:
            raise self._fail(
                f"only {k} neighbours for threshold {cfg.threshold}: secrets could not be rebuilt",
                None,
            )
        self._setup = setup
        self._neighbours = {n.device: n for n in setup.neighbours}
        xs = [n.x for n in setup.neighbours]
        b_shares = shamir.split(self._b, cfg.threshold, xs)
        sk_shares = shamir.split(_private_bytes(self._s), cfg.threshold, xs)
        ciphertexts: dict[str, bytes] = {}
        for n, bs, ss in zip(setup.neighbours, b_shares, sk_shares, strict=True):
            key = _hkdf(_agree(self._c, n.c_pk, n.device),
                        b"fedge-secagg share key|" + setup.round_id)
            nonce = os.urandom(12)
            ciphertexts[n.device] = nonce + ChaCha20Poly1305(key).encrypt(
                nonce, bs.y_bytes() + ss.y_bytes(), _aad(setup.round_id, self.device, n.device)
            )
        self.state = ClientState.SHARES_SENT
        return ShareKeys(self.device, _commit(self._b, setup.round_id, self.device), ciphertexts)

    def masked_input(self, shares: SharesFor, vector: np.ndarray) -> MaskedInput:
        """Mask a clipped flat update (see :func:`flatten`)."""
        self._expect(ClientState.SHARES_SENT, "send a masked input")
        setup = self._setup
        assert setup is not None
        if vector.ndim != 1 or vector.size != setup.vector_length:
            raise self._fail(
                f"update has {vector.size} values; the round expects {setup.vector_length}", None
            )
        for sender, blob in shares.ciphertexts.items():
            n = self._neighbours.get(sender)
            if n is None:
                raise self._fail(f"received shares from {sender}, not a neighbour", sender)
            key = _hkdf(_agree(self._c, n.c_pk, sender),
                        b"fedge-secagg share key|" + setup.round_id)
            try:
                plain = ChaCha20Poly1305(key).decrypt(
                    blob[:12], blob[12:], _aad(setup.round_id, sender, self.device)
                )
            except (InvalidTag, ValueError) as exc:
                raise self._fail(f"shares from {sender} do not decrypt", sender) from exc
            if len(plain) != 2 * shamir.SHARE_BYTES:
                raise self._fail(f"shares from {sender} have the wrong size", sender)
            self._held[sender] = (
                shamir.Share.from_y_bytes(setup.x, plain[: shamir.SHARE_BYTES]),
                shamir.Share.from_y_bytes(setup.x, plain[shamir.SHARE_BYTES :]),
            )
        fp = setup.config.fixed_point
        bits = setup.config.modulus_bits
        y = fp.encode(vector)
        y += prg(_self_seed(self._b, setup.round_id), y.size, bits)
        for v in sorted(self._held):  # neighbours in U2: they sent us shares
            seed = _mask_seed(_agree(self._s, self._neighbours[v].s_pk, v), setup.round_id)
            mask = prg(seed, y.size, bits)
            if self.device < v:
                y += mask
            else:
                y -= mask
        self.state = ClientState.INPUT_SENT
        return MaskedInput(self.device, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal shares: of b for survivors, of s_sk for dropped neighbours —
        never both for one device, and only once per round."""
        self._expect(ClientState.INPUT_SENT, "unmask")
        setup = self._setup
        assert setup is not None
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise self._fail(
                f"server asked for both shares of {sorted(survivors & dropped)}: refused", None
            )
        unknown = (survivors | dropped) - set(self._held)
        if unknown:
            raise self._fail(f"server asked about {sorted(unknown)}, which sent no shares", None)
        if request.survivor_count < setup.config.min_clients:
            raise self._fail(
                f"only {request.survivor_count} inputs in the sum (min_clients "
                f"{setup.config.min_clients}): refusing to unmask",
                None,
            )
        self.state = ClientState.DONE
        return UnmaskResponse(
            self.device,
            {u: self._held[u][0].y_bytes() for u in sorted(survivors)},
            {v: self._held[v][1].y_bytes() for v in sorted(dropped)},
        )


# --------------------------------------------------------------------------- server


class ServerState(Enum):
    COLLECTING_KEYS = "collecting_keys"
    COLLECTING_SHARES = "collecting_shares"
    COLLECTING_INPUTS = "collecting_inputs"
    UNMASKING = "unmasking"
    DONE = "done"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class SecAggResult:
    """The round's sum and what it cost."""

    total: np.ndarray  # float64 sum of the survivors' updates
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]  # shared keys, then sent no (valid) input
    # (owner, holder): the share ``holder`` returned for ``owner``'s secret
    # is off the polynomial the other shares and the commitment agree on —
    # either the holder or the owner lied. The sum is still exact.
    inconsistent: tuple[tuple[str, str], ...]


@dataclass
class _Device:
    advert: KeyAdvert
    x: int
    commitment: bytes | None = None
    ciphertexts: Mapping[str, bytes] = field(default_factory=dict)
    vector: np.ndarray | None = None


class SecAggServer:
    """The service's side of one round. Every ``receive_*`` validates its
    message and raises :class:`ProtocolViolation` (naming the device) on a
    lie; the device is then excluded and treated as dropped."""

    def __init__(
        self, config: SecAggConfig, vector_length: int, round_id: bytes | None = None
    ) -> None:
        if vector_length < 1:
            raise PrivacyConfigError(f"vector_length: {vector_length} must be ≥ 1")
        self.config = config
        self.vector_length = vector_length
        self.round_id = round_id if round_id is not None else secrets.token_bytes(16)
        self.state = ServerState.COLLECTING_KEYS
        self.abandon_reason: str | None = None
        self._devices: dict[str, _Device] = {}
        self._graph: dict[str, tuple[str, ...]] = {}
        self._u2: set[str] = set()
        self._u3: set[str] = set()
        self._requests: dict[str, UnmaskRequest] = {}
        self._b_shares: dict[str, dict[str, shamir.Share]] = {}
        self._sk_shares: dict[str, dict[str, shamir.Share]] = {}
        self._answered: set[str] = set()
        self.violations: list[ProtocolViolation] = []

    # -------------------------------------------------------------- helpers

    def _expect(self, state: ServerState, action: str) -> None:
        if self.state is not state:
            raise SecAggError(f"cannot {action} in state {self.state.value}")

    def _abandon(self, reason: str) -> SecAggAbandoned:
        self.state = ServerState.ABANDONED
        self.abandon_reason = reason
        return SecAggAbandoned(f"secure aggregation round abandoned: {reason}")

    def _violation(self, message: str, device: str) -> ProtocolViolation:
        exc = ProtocolViolation(message, device)
        self.violations.append(exc)
        return exc

    def _known(self, device: str) -> _Device:
        d = self._devices.get(device)
        if d is None:
            raise self._violation(f"{device} is not in this round", device)
        return d

    @property
    def graph(self) -> Mapping[str, tuple[str, ...]]:
        return self._graph

    def revealed(self) -> dict[str, tuple[int, int]]:
        """For each device, how many shares of its self-mask seed and of its
        mask key the server holds. The protocol keeps one of the two at 0."""
        return {
            d: (len(self._b_shares.get(d, {})), len(self._sk_shares.get(d, {})))
            for d in self._devices
        }

    # -------------------------------------------------------------- round 0

    def receive_keys(self, msg: KeyAdvert) -> None:
        self._expect(ServerState.COLLECTING_KEYS, "receive keys")
        if msg.device in self._devices:
            raise self._violation(f"{msg.device} advertised keys twice", msg.device)
        for key in (msg.c_pk, msg.s_pk):
            if len(key) != KEY_BYTES:
                raise self._violation(f"{msg.device}: public keys are 32 bytes", msg.device)
        if msg.c_pk == msg.s_pk:
            raise self._violation(f"{msg.device}: the two public keys must differ", msg.device)
        if len(self._devices) >= self.config.max_clients:
            raise self._violation(f"round is full ({self.config.max_clients})", msg.device)
        self._devices[msg.device] = _Device(msg, x=0)

    def close_keys(self) -> dict[str, RoundSetup]:
        self._expect(ServerState.COLLECTING_KEYS, "close key collection")
        n = len(self._devices)
        if n < self.config.min_clients:
            raise self._abandon(f"{n} devices advertised keys; min_clients is "
                                f"{self.config.min_clients}")
        if min(self.config.degree, n - 1) < self.config.threshold:
            raise self._abandon(
                f"{n} devices give each only {n - 1} neighbours, fewer than the threshold "
                f"{self.config.threshold}"
            )
        for i, name in enumerate(sorted(self._devices), start=1):
            self._devices[name].x = i
        self._graph = harary_graph(list(self._devices), self.config.degree, self.round_id)
        setups = {}
        for name, neighbours in self._graph.items():
            infos = tuple(
                NeighbourInfo(v, self._devices[v].x, self._devices[v].advert.c_pk,
                              self._devices[v].advert.s_pk)
                for v in neighbours
            )
            setups[name] = RoundSetup(self.round_id, name, self._devices[name].x,
                                      self.vector_length, self.config, infos)
        self.state = ServerState.COLLECTING_SHARES
        return setups

    # -------------------------------------------------------------- round 1

    def receive_shares(self, msg: ShareKeys) -> None:
        self._expect(ServerState.COLLECTING_SHARES, "receive shares")
        d = self._known(msg.device)
        if d.commitment is not None:
            raise self._violation(f"{msg.device} sent shares twice", msg.device)
        if set(msg.ciphertexts) != set(self._graph[msg.device]):
            raise self._violation(
                f"{msg.device} sent shares for {sorted(msg.ciphertexts)}, not for its neighbours",
                msg.device,
            )
        if len(msg.commitment) != 32:
            raise self._violation(f"{msg.device}: commitment must be 32 bytes", msg.device)
        d.commitment = msg.commitment
        d.ciphertexts = dict(msg.ciphertexts)

    def close_shares(self) -> dict[str, SharesFor]:
        self._expect(ServerState.COLLECTING_SHARES, "close share collection")
        self._u2 = {name for name, d in self._devices.items() if d.commitment is not None}
        if len(self._u2) < self.config.min_clients:
            raise self._abandon(f"{len(self._u2)} devices shared keys; min_clients is "
                                f"{self.config.min_clients}")
        out = {}
        for v in sorted(self._u2):
            cts = {u: self._devices[u].ciphertexts[v] for u in self._graph[v] if u in self._u2}
            out[v] = SharesFor(v, cts)
        self.state = ServerState.COLLECTING_INPUTS
        return out

    # -------------------------------------------------------------- round 2

    def receive_masked_input(self, msg: MaskedInput) -> None:
        self._expect(ServerState.COLLECTING_INPUTS, "receive masked inputs")
        d = self._known(msg.device)
        if msg.device not in self._u2:
            raise self._violation(f"{msg.device} sent an input without sharing keys", msg.device)
        if d.vector is not None:
            raise self._violation(f"{msg.device} sent its input twice", msg.device)
        vec = np.asarray(msg.vector)
        want = self.config.fixed_point.dtype
        if vec.ndim != 1 or vec.size != self.vector_length or vec.dtype != want:
            raise self._violation(
                f"{msg.device}: masked input must be {self.vector_length} {np.dtype(want).name} "
                f"ring elements, got {vec.size} {vec.dtype.name}",
                msg.device,
            )
        d.vector = vec.copy()

    def close_inputs(self) -> dict[str, UnmaskRequest]:
        self._expect(ServerState.COLLECTING_INPUTS, "close input collection")
        self._u3 = {n for n in self._u2 if self._devices[n].vector is not None}
        if len(self._u3) < self.config.min_clients:
            raise self._abandon(f"{len(self._u3)} masked inputs; min_clients is "
                                f"{self.config.min_clients}")
        if not _connected(self._u3, self._graph):
            # The sums of separate components would each be revealed.
            raise self._abandon("the surviving devices' mask graph is not connected")
        requests = {}
        for v in sorted(self._u3):
            nbs = [u for u in self._graph[v] if u in self._u2]
            requests[v] = UnmaskRequest(
                v,
                tuple(u for u in nbs if u in self._u3),
                tuple(u for u in nbs if u not in self._u3),
                len(self._u3),
            )
        self._requests = requests
        self.state = ServerState.UNMASKING
        return requests

    # -------------------------------------------------------------- round 3

    def receive_unmask(self, msg: UnmaskResponse) -> None:
        self._expect(ServerState.UNMASKING, "receive unmask shares")
        request = self._requests.get(msg.device)
        if request is None:
            raise self._violation(f"{msg.device} was not asked to unmask", msg.device)
        if msg.device in self._answered:
            raise self._violation(f"{msg.device} answered twice", msg.device)
        if set(msg.self_mask_shares) != set(request.survivors) or set(msg.key_shares) != set(
            request.dropped
        ):
            raise self._violation(f"{msg.device} answered a different question", msg.device)
        x = self._devices[msg.device].x
        try:
            b = {u: shamir.Share.from_y_bytes(x, y) for u, y in msg.self_mask_shares.items()}
            k = {v: shamir.Share.from_y_bytes(x, y) for v, y in msg.key_shares.items()}
        except SecAggError as exc:
            raise self._violation(f"{msg.device}: {exc}", msg.device) from exc
        self._answered.add(msg.device)
        for u, share in b.items():
            self._b_shares.setdefault(u, {})[msg.device] = share
        for v, share in k.items():
            self._sk_shares.setdefault(v, {})[msg.device] = share

    def _rebuild(
        self,
        owner: str,
        shares: Mapping[str, shamir.Share],
        verify: Any,
        inconsistent: set[tuple[str, str]],
    ) -> bytes:
        t = self.config.threshold
        if len(shares) < t:
            raise self._abandon(
                f"only {len(shares)} shares of {owner}'s secret arrived; the threshold is {t}"
            )
        holders = sorted(shares)
        ordered = [shares[h] for h in holders]

        def candidates() -> Iterator[list[shamir.Share]]:
            yield ordered[:t]
            if len(ordered) > t:
                # Bounded search for a consistent subset when some holder lied.
                rng = np.random.default_rng(int.from_bytes(self.round_id[:8], "big"))
                for _ in range(64):
                    picked = sorted(rng.choice(len(ordered), t, replace=False))
                    yield [ordered[i] for i in picked]

        for subset in candidates():
            try:
                secret = shamir.combine(subset, KEY_BYTES)
            except SecAggError:
                continue
            if verify(secret):
                used = {s.x for s in subset}
                inconsistent.update(
                    (owner, h) for h, s in zip(holders, ordered, strict=True)
                    if s.x not in used and shamir.interpolate(subset, s.x) != s.y
                )
                return secret
        raise self._abandon(
            f"the shares of {owner}'s secret do not match its commitment: {owner} (or more than "
            f"{len(shares) - t} of its neighbours) sent inconsistent shares"
        )

    def finalize(self) -> SecAggResult:
        """Remove the masks and return the sum, or abandon the round."""
        self._expect(ServerState.UNMASKING, "finalize")
        bits = self.config.modulus_bits
        fp = self.config.fixed_point
        total = np.zeros(self.vector_length, dtype=fp.dtype)
        for u in self._u3:
            vec = self._devices[u].vector
            assert vec is not None
            total += vec
        inconsistent: set[tuple[str, str]] = set()
        for u in sorted(self._u3):
            commitment = self._devices[u].commitment

            def check_b(secret: bytes, u: str = u, c: bytes | None = commitment) -> bool:
                return _commit(secret, self.round_id, u) == c

            b = self._rebuild(u, self._b_shares.get(u, {}), check_b, inconsistent)
            total -= prg(_self_seed(b, self.round_id), self.vector_length, bits)
        for v in sorted(self._u2 - self._u3):
            s_pk = self._devices[v].advert.s_pk

            def check_sk(secret: bytes, pk: bytes = s_pk) -> bool:
                return _public_bytes(X25519PrivateKey.from_private_bytes(secret)) == pk

            sk = X25519PrivateKey.from_private_bytes(
                self._rebuild(v, self._sk_shares.get(v, {}), check_sk, inconsistent)
            )
            for u in self._graph[v]:
                if u not in self._u3:
                    continue
                seed = _mask_seed(_agree(sk, self._devices[u].advert.s_pk, u), self.round_id)
                mask = prg(seed, self.vector_length, bits)
                # u added +mask if u < v else −mask; take it back.
                if u < v:
                    total -= mask
                else:
                    total += mask
        self.state = ServerState.DONE
        return SecAggResult(
            total=fp.decode_sum(total, len(self._u3)),
            survivors=tuple(sorted(self._u3)),
            dropped=tuple(sorted(self._u2 - self._u3)),
            inconsistent=tuple(sorted(inconsistent)),
        )


# --------------------------------------------------------------------------- layout helpers


Layout = Sequence[tuple[str, tuple[int, ...]]]


def flatten(update: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
    """Concatenate an update's tensors in ``layout`` order (name, shape)."""
    parts = []
    for name, shape in layout:
        if name not in update:
            raise SecAggError(f"update is missing tensor {name!r}")
        value = np.asarray(update[name], dtype=np.float64)
        if value.shape != tuple(shape):
            raise SecAggError(f"tensor {name!r} has shape {value.shape}, expected {tuple(shape)}")
        parts.append(value.ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten(vector: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    if offset != vector.size:
        raise SecAggError(f"vector has {vector.size} values; the layout needs {offset}")
    return out


# --------------------------------------------------------------------------- in-process transport


@dataclass(frozen=True)
class RoundStats:
    """What one in-process round cost: bytes on the (encoded) wire and CPU
    time, per device and for the server."""

    bytes_up: Mapping[str, int]  # device → bytes it sent
    bytes_down: Mapping[str, int]  # device → bytes it received
    client_seconds: Mapping[str, float]  # device → time in its own calls
    server_seconds: float


@dataclass(frozen=True)
class Dropouts:
    """Who stops answering, and when (a test seam and a simulator knob)."""

    before_keys: frozenset[str] = frozenset()
    after_keys: frozenset[str] = frozenset()  # advertised keys, never shared
    after_shares: frozenset[str] = frozenset()  # shared keys, never sent an input
    after_input: frozenset[str] = frozenset()  # sent an input, never unmasked


def run_local_round(
    config: SecAggConfig,
    inputs: Mapping[str, np.ndarray],
    *,
    dropouts: Dropouts | None = None,
    round_id: bytes | None = None,
    clients: Mapping[str, SecAggClient] | None = None,
) -> tuple[SecAggResult, RoundStats, SecAggServer]:
    """Run one round in this process, every message encoded and decoded as
    it would be on the wire. ``clients`` lets a test substitute a lying
    client for some devices. Raises :class:`SecAggAbandoned` like the real
    round; the server is returned for inspection."""
    drops = dropouts or Dropouts()
    length = len(next(iter(inputs.values())))
    server = SecAggServer(config, length, round_id)
    cl = {d: (clients or {}).get(d) or SecAggClient(d) for d in inputs}
    up = dict.fromkeys(inputs, 0)
    down = dict.fromkeys(inputs, 0)
    cpu = dict.fromkeys(inputs, 0.0)
    server_s = 0.0

    def client_call(device: str, fn: Any, *args: Any) -> Message:
        start = time.perf_counter()
        out: Message = fn(*args)
        cpu[device] += time.perf_counter() - start
        wire = encode_message(out)
        up[device] += len(wire)
        return decode_message(wire)

    def deliver(device: str, msg: Message) -> Message:
        wire = encode_message(msg)
        down[device] += len(wire)
        return decode_message(wire)

    def server_call(fn: Any, *args: Any) -> Any:
        nonlocal server_s
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            server_s += time.perf_counter() - start

    active = [d for d in sorted(inputs) if d not in drops.before_keys]
    for d in active:
        msg = client_call(d, cl[d].advertise_keys)
        assert isinstance(msg, KeyAdvert)
        server_call(server.receive_keys, msg)
    setups = server_call(server.close_keys)
    active = [d for d in active if d not in drops.after_keys]
    for d in active:
        setup = deliver(d, setups[d])
        msg = client_call(d, cl[d].share_keys, setup)
        assert isinstance(msg, ShareKeys)
        server_call(server.receive_shares, msg)
    routed = server_call(server.close_shares)
    active = [d for d in active if d not in drops.after_shares]
    for d in active:
        shares = deliver(d, routed[d])
        msg = client_call(d, cl[d].masked_input, shares, np.asarray(inputs[d]))
        assert isinstance(msg, MaskedInput)
        try:
            server_call(server.receive_masked_input, msg)
        except ProtocolViolation:
            continue  # excluded: counted in server.violations, treated as dropped
    requests = server_call(server.close_inputs)
    active = [d for d in active if d not in drops.after_input and d in requests]
    for d in active:
        request = deliver(d, requests[d])
        msg = client_call(d, cl[d].unmask, request)
        assert isinstance(msg, UnmaskResponse)
        try:
            server_call(server.receive_unmask, msg)
        except ProtocolViolation:
            continue
    result = server_call(server.finalize)
    return result, RoundStats(up, down, cpu, server_s), server
