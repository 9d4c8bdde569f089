"""Crash-safe state files and the upload queue.

Every state file is written as temp file → fsync → rename → fsync(dir), so a
power cut leaves either the old or the new file, never a torn one. The status
snapshot (``status.json``, for humans) skips the two fsyncs: the rename alone
keeps it whole, and after a power cut an older snapshot is fine; a stray
``*.tmp`` left by a cut is ignored and removed on the next start. The opener
is injectable so tests can make the disk "full" (ENOSPC) without filling it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.errors import StateReadError, StateWriteError
from edge_client.paths import inside, safe_name

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
Opener = Callable[[str, int], int]


def _default_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class AtomicWriter:
    """Writes whole files atomically. ``opener`` is the test seam for disk faults."""

    def __init__(self, opener: Opener | None = None, *, fsync: bool = True) -> None:
        self._opener = opener or _default_opener
        self._fsync = fsync

    def write_bytes(self, path: Path, data: bytes, *, durable: bool = True) -> None:
        """Write ``data`` to ``path`` atomically; ``durable=False`` skips the
        fsyncs (still never torn: temp file + rename) for files whose loss on a
        power cut costs nothing, like the status snapshot."""
        sync = self._fsync and durable
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
        fd = -1
        try:
            fd = self._opener(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
            if sync:
                self._sync_dir(path.parent)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            what = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise StateWriteError(f"cannot write {path}: {what}") from exc

    def write_json(self, path: Path, data: Any, *, durable: bool = True) -> None:
        self.write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(),
                         durable=durable)

    @staticmethod
    def _sync_dir(directory: Path) -> None:
        # The rename is durable only once the directory entry is on disk.
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def read_json(path: Path) -> Any | None:
    """The file's JSON, or None if it does not exist. A corrupt file is renamed
    ``*.corrupt`` (kept for inspection) and reported, never trusted."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        with contextlib.suppress(OSError):
            path.replace(path.with_name(path.name + ".corrupt"))
        raise StateReadError(f"{path}: not valid JSON, set aside as *.corrupt ({exc})") from exc


def remove_torn_temp_files(directory: Path) -> int:
    """Delete temp files a power cut left behind; returns how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for tmp in directory.rglob(f"*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


def arrays_to_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    arrays_np: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    np.savez(buffer, **arrays_np)
    return buffer.getvalue()


def arrays_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Arrays from .npz bytes; ValueError for anything that is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"not a valid .npz ({exc})") from exc


@dataclass(frozen=True)
class Identity:
    """Who this device is to the server (written by ``fedge agent init``)."""

    device_id: str
    device_token: str
    server: str
    enrolled_at: float


@dataclass(frozen=True)
class QueuedUpload:
    """One encoded update waiting for its 202. The key never changes across retries
    or restarts, so the server counts the update once."""

    idempotency_key: str
    assignment_id: str
    model: str
    base_version: int
    examples: int
    created_at: float
    deadline_at: float | None
    attempts: int = 0
    # Adaptive clipping: 1 if the update's norm fitted under the plan's bound
    # before clipping, 0 if it was clipped; None when the plan did not ask.
    clip_bit: int | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            "Idempotency-Key": self.idempotency_key,
            "Fedge-Assignment": self.assignment_id,
            "Fedge-Model": self.model,
            "Fedge-Base-Version": str(self.base_version),
            "Fedge-Examples": str(self.examples),
            "Content-Type": "application/octet-stream",
        }
        if self.clip_bit is not None:
            headers["Fedge-Clip-Bit"] = str(self.clip_bit)
        return headers


class StateDir:
    """The agent's on-disk state (layout in docs/agent.md)::

        identity.json         device id + token (0600)
        status.json           lifecycle state, eligibility, last results (for `status`)
        residual/<model>.npz  error-feedback residual
        queue/<key>.bin       encoded update (written first)
        queue/<key>.json      its metadata (written second: the commit record)
        cache/index.json      cached versions per model
        cache/graphs/<sha256>.tflite, cache/weights/<model>/<version>.npz
    """

    def __init__(self, root: Path, writer: AtomicWriter | None = None) -> None:
        self.root = root
        self.writer = writer or AtomicWriter()
        # The queue's length as last counted: every cycle asks, and only this
        # object adds or removes entries, so the directory is listed again
        # only after a change.
        self._queue_len: int | None = None
        # The residual this object last wrote, per model, with the file's
        # identity (inode, size, mtime_ns) right after the write: the next
        # round reads it from memory unless the file changed since.
        self._residuals: dict[str, tuple[tuple[int, int, int], dict[str, np.ndarray]]] = {}

    def prepare(self) -> None:
        fresh = not self.root.exists()  # nothing can be torn in a new directory
        for sub in ("queue", "residual", "cache/graphs", "cache/weights", "cache/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        removed = 0 if fresh else remove_torn_temp_files(self.root)
        if removed:
            log.warning("removed %d torn temp file(s) left by an interrupted write", removed)

    # identity ------------------------------------------------------------
    @property
    def identity_path(self) -> Path:
        return self.root / "identity.json"

    def save_identity(self, identity: Identity) -> None:
        self.writer.write_json(self.identity_path, asdict(identity))

    def load_identity(self) -> Identity | None:
        data = read_json(self.identity_path)
        if data is None:
            return None
        try:
            return Identity(**data)
        except TypeError as exc:
            raise StateReadError(f"{self.identity_path}: unexpected fields ({exc})") from exc

    # status --------------------------------------------------------------
    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    def save_status(self, status: Mapping[str, Any]) -> None:
        # A snapshot for `fedge agent status`: atomic, but not worth two fsyncs
        # per state change on an SD card.
        self.writer.write_json(self.status_path, dict(status), durable=False)

    def load_status(self) -> dict[str, Any] | None:
        data = read_json(self.status_path)
        return data if isinstance(data, dict) else None

    # residual ------------------------------------------------------------
    def residual_path(self, model: str) -> Path:
        return self.root / "residual" / f"{safe_name(model, 'model')}.npz"

    def save_residual(self, model: str, residual: Mapping[str, np.ndarray]) -> None:
        path = inside(self.root, self.residual_path(model))
        self._residuals.pop(model, None)
        self.writer.write_bytes(path, arrays_to_bytes(residual))
        kept = {}
        for name, array in residual.items():
            frozen = np.array(array, copy=True)
            frozen.flags.writeable = False  # shared with every later load
            kept[name] = frozen
        with contextlib.suppress(OSError):
            st = path.stat()
            self._residuals[model] = ((st.st_ino, st.st_size, st.st_mtime_ns), kept)

    def load_residual(self, model: str) -> dict[str, np.ndarray] | None:
        """The residual (read-only arrays), from memory if this object wrote
        the file and it is unchanged, else parsed from disk."""
        path = self.residual_path(model)
        remembered = self._residuals.get(model)
        if remembered is not None:
            try:
                st = path.stat()
            except OSError:
                st = None
            if st is not None and (st.st_ino, st.st_size, st.st_mtime_ns) == remembered[0]:
                return dict(remembered[1])
            del self._residuals[model]
        try:
            return arrays_from_bytes(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # A residual is an optimisation: losing it costs a little accuracy, never correctness.
            log.warning("ignoring unreadable residual %s: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    # upload queue --------------------------------------------------------
    def enqueue(self, entry: QueuedUpload, payload: bytes) -> None:
        queue = self.root / "queue"
        self._queue_len = None
        # Payload first, metadata second: an entry exists only once both are on disk.
        self.writer.write_bytes(queue / f"{entry.idempotency_key}.bin", payload)
        self.writer.write_json(queue / f"{entry.idempotency_key}.json", asdict(entry))

    def update_queued(self, entry: QueuedUpload) -> None:
        self.writer.write_json(self.root / "queue" / f"{entry.idempotency_key}.json", asdict(entry))

    def dequeue(self, key: str) -> None:
        queue = self.root / "queue"
        self._queue_len = None
        for suffix in (".json", ".bin"):  # metadata first: a half-removed entry is gone
            with contextlib.suppress(FileNotFoundError):
                (queue / f"{key}{suffix}").unlink()

    def queued(self) -> Iterator[tuple[QueuedUpload, bytes]]:
        """Pending uploads, oldest first. Incomplete or unreadable entries are removed."""
        queue = self.root / "queue"
        self._queue_len = None  # unreadable entries are removed on the way
        if not queue.is_dir():
            return
        entries = []
        for meta in queue.glob("*.json"):
            try:
                data = read_json(meta)
                if not isinstance(data, dict):
                    raise StateReadError(f"{meta}: expected a JSON object")
                entry = QueuedUpload(**data)
                payload = meta.with_suffix(".bin").read_bytes()
            except (StateReadError, TypeError, OSError) as exc:
                log.warning("dropping unreadable queued upload %s: %s", meta.name, exc)
                self.dequeue(meta.stem)
                continue
            entries.append((entry.created_at, entry, payload))
        for bin_file in queue.glob("*.bin"):
            if not bin_file.with_suffix(".json").exists():
                # A payload without its commit record: the agent stopped between the two writes.
                with contextlib.suppress(OSError):
                    bin_file.unlink()
        for _, entry, payload in sorted(entries, key=lambda e: e[0]):
            yield entry, payload

    def queue_length(self) -> int:
        if self._queue_len is None:
            queue = self.root / "queue"
            self._queue_len = len(list(queue.glob("*.json"))) if queue.is_dir() else 0
        return self._queue_len
