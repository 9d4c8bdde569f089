"""Fixed-width bit packing into an LSB-first bit stream.

Value ``i`` of width ``b`` occupies stream bits ``[b·i, b·i + b)``, least
significant bit first; stream bit ``t`` is bit ``t mod 8`` of byte ``t // 8``
(numpy's ``packbits(bitorder="little")``). The last byte is zero-padded.

Widths up to 8 use a word trick instead of a bit matrix: eight ``b``-bit codes
fill exactly ``b`` bytes, so each group of eight is OR-ed into one
little-endian uint64 and its low ``b`` bytes are kept. That is vectorized and
allocates ~16 bytes per code rather than ``b`` bytes per bit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_SHIFTS = np.arange(8, dtype=np.uint64)
# Shift of each of the eight codes in a packed word, per width.
_WORD_SHIFTS = {bits: _SHIFTS * np.uint64(bits) for bits in range(1, 9)}


def packed_size(count: int, bits: int) -> int:
    """Bytes used by ``count`` codes of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack(codes: npt.NDArray[np.integer], bits: int) -> bytes:
    """Pack unsigned codes (each < 2**bits, 1 ≤ bits ≤ 8)."""
    count = codes.size
    if bits == 8:
        return bytes(codes.astype(np.uint8, copy=False).tobytes())
    groups = (count + 7) // 8
    padded = np.zeros(groups * 8, dtype=np.uint64)
    padded[:count] = codes
    words = padded.reshape(groups, 8) << (_SHIFTS * np.uint64(bits))
    packed = np.bitwise_or.reduce(words, axis=1).astype("<u8")
    out = packed.view(np.uint8).reshape(groups, 8)[:, :bits]
    return bytes(out.tobytes())[: packed_size(count, bits)]


def unpack(
    data: bytes | memoryview | npt.NDArray[np.uint8], bits: int, count: int
) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`pack`; ``data`` must hold exactly ``packed_size`` bytes."""
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if bits == 8:
        return raw[:count].copy()
    groups = (count + 7) // 8
    padded = np.zeros((groups, 8), dtype=np.uint8)
    # Fill the low ``bits`` bytes of each 8-byte word from the stream (the
    # last group may be short).
    whole = min(groups, raw.size // bits)
    padded[:whole, :bits] = raw[: whole * bits].reshape(whole, bits)
    rest = raw[whole * bits :]
    if rest.size:
        padded[whole, : rest.size] = rest
    words = padded.view("<u8")  # (groups, 1)
    codes = (words >> _WORD_SHIFTS[bits]).astype(np.uint8)  # keeps each code's low byte
    codes &= np.uint8((1 << bits) - 1)
    result: npt.NDArray[np.uint8] = codes.reshape(-1)[:count]
    return result


def padding_is_zero(data: bytes | memoryview, count: int, bits: int) -> bool:
    """True when the unused high bits of the last byte are zero (canonical form)."""
    used = count * bits
    if used % 8 == 0 or len(data) == 0:
        return True
    last = data[len(data) - 1]
    return (last >> (used % 8)) == 0
