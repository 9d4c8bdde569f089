"""Which implementation of the hot loops runs: compiled (numba) or numpy.

The numpy code is the reference and the fallback; the compiled kernels
(:mod:`quantization.kernels`) give the same bits and refuse the same frames.
The choice is made once per process, on first use, from ``FEDGE_CODEC_JIT``:

- ``auto`` (the default, also when unset or empty): numba if it imports,
  else numpy — an edge install without numba just runs the reference;
- ``on``: numba, and a :class:`CodecError` saying so if it cannot be loaded;
- ``off``: numpy, even where numba is installed.

numba keeps compiled code on disk (``cache=True``). Its own choice of
directory is the package's ``__pycache__`` when writable, else a per-user
cache directory; ``NUMBA_CACHE_DIR`` overrides both. Where none is writable
(a read-only install run by a user without a home), this module points numba
at ``FEDGE_CODEC_JIT_CACHE`` or a per-user directory under the system's
temporary directory, so compiled code is still kept between runs.

Compiling takes a few seconds the first time (loading from the cache, tens
of milliseconds): :func:`warm_up` does it ahead, so no request pays for it.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from quantization.errors import CodecError

ENV = "FEDGE_CODEC_JIT"
CACHE_ENV = "FEDGE_CODEC_JIT_CACHE"
_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class Backend:
    name: str  # "numba" or "numpy"
    reason: str  # why this one (for logs and reports)




def _setting() -> str:
    raw = os.environ.get(ENV, "").strip().lower()
    value = {"": "auto", "1": "on", "true": "on", "0": "off", "false": "off"}.get(raw, raw)
    if value not in _CHOICES:
        raise CodecError(
            f"{ENV}={os.environ.get(ENV)!r}: expected one of {', '.join(_CHOICES)} "
            "(or 1/0, true/false)"
        )
    return value


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fedge-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def _cache_dir() -> Path | None:
    """Where numba should cache, or None to leave numba's own choice."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if _writable(Path(__file__).resolve().parent / "__pycache__"):
        return None
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    user = Path(xdg) / "numba"  # numba's per-user location
    if _writable(user):
        return None
    return Path(tempfile.gettempdir()) / f"fedge-numba-{os.getuid()}"


def point_numba_cache() -> None:
    """Give numba a writable cache directory if its own choices are not
    (called by :mod:`quantization.kernels` before it compiles anything)."""
    from numba.core import config  # noqa: PLC0415 - only where numba is used

    cache = _cache_dir()
    if cache is not None:
        # numba fills its config module's globals from the environment at
        # import, so they are invisible to type checkers.
        setattr(config, "CACHE_DIR", str(cache))  # noqa: B010


def _load() -> tuple[Backend, ModuleType | None]:
    setting = _setting()
    if setting == "off":
        return Backend("numpy", f"{ENV}=off"), None
    try:
        # Imported here, not at the top: numba takes ≈0.3 s and tens of MB to
        # import, which a process that never decodes an update should not pay.
        import numba  # noqa: PLC0415

        from quantization import compiled  # noqa: PLC0415 - imports numba

        # Compile (or load from the cache) and run every kernel once now: a
        # numba that imports but cannot compile here falls back as well.
        compiled.warm_up()
    except Exception as exc:  # ImportError, numba failing to initialise or compile
        if setting == "on":
            raise CodecError(f"{ENV}=on but the compiled codec kernels cannot load: {exc}") from exc
        reason = f"compiled kernels unavailable ({type(exc).__name__}: {exc})"
        return Backend("numpy", reason), None
    return Backend("numba", f"numba {numba.__version__}"), compiled


@functools.cache
def _resolve() -> tuple[Backend, ModuleType | None]:
    return _load()


def backend() -> Backend:
    """The implementation this process uses (resolved on the first call, which
    with numba includes compiling or loading the kernels: see warm_up)."""
    return _resolve()[0]


def compiled() -> ModuleType | None:
    """:mod:`quantization.compiled` (decoders over the kernels), or None
    when the numpy path is used."""
    return _resolve()[1]


def warm_up() -> tuple[Backend, float]:
    """Choose the path now and, with numba, load or compile every kernel the
    decoders use (and run each once).

    Returns the backend and the seconds it took (≈0 for numpy, or when done
    before). Call it when a process starts, before it serves: the first
    ``decode_into`` then costs what every later one does."""
    started = time.perf_counter()
    chosen, _ = _resolve()
    return chosen, time.perf_counter() - started
