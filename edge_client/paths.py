"""Names that become file names in the state directory, and the check that
every such file stays inside it.

A check-in plan comes from the network: over plain HTTP anyone on the path can
write it. Its model name and hashes end up in file names (the weights cache,
the manifest cache, the residual, partial downloads), so each is checked here
before it touches a path — ASCII letters, digits, ``-``, ``_`` and ``.``,
never only dots, no separators, NUL or other Unicode — and every path
built from one is resolved and must lie inside its root. One helper, used by
the config, the plan parser, the cache and the state directory alike.
"""

from __future__ import annotations

import re
from pathlib import Path

from edge_client.errors import UnsafeNameError

# What the service accepts as a model name, restricted to ASCII: 1–64 letters,
# digits, '-', '_', '.'.
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def safe_name(value: object, what: str) -> str:
    """``value`` if it can be used as one file-name component, else UnsafeNameError."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or set(value) == {"."}:
        raise UnsafeNameError(
            f"{what}: {value!r} is not a safe name (1–64 ASCII letters, digits, '-', '_', '.'; "
            "not only dots)"
        )
    return value


def safe_sha256(value: object, what: str) -> str:
    """``value`` if it is 64 lowercase hex digits, else UnsafeNameError."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise UnsafeNameError(f"{what}: {value!r} is not a sha256 (64 lowercase hex digits)")
    return value


def inside(root: Path, path: Path) -> Path:
    """``path``, resolved, if it lies inside ``root`` (also resolved);
    UnsafeNameError otherwise. Symbolic links are followed, so a link planted
    in the state directory cannot point a write elsewhere either. Called
    before every write of a file whose name came from a plan (the names are
    already :func:`safe_name`-checked, so lexically they stay inside)."""
    base = root.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(base) or resolved == base:
        raise UnsafeNameError(f"{path} leads outside the state directory {base}")
    return resolved
