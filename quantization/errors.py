"""The one exception type the codecs raise on bad input."""

from __future__ import annotations

from fedge.errors import FedgeError


class CodecError(FedgeError, ValueError):
    """A codec spec, an update to encode, or a frame to decode is invalid.

    Decoding raises nothing else on bad input: errors from zstandard, numpy and
    struct are translated into this type at the package boundary, with a
    message that says what was wrong.
    """
