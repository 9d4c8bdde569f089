"""Content-addressed blob directory: model graphs, weight frames, optimizer state.

A blob lives at ``blobs/ab/abcdef…`` (its sha256). Writes go to a temporary
file in the same directory, are fsynced, renamed into place and the directory
is fsynced, so a blob either exists whole under its name or not at all. Reads
verify the hash the first time a blob is served by this process (a corrupted
disk is detected on first serve after start) and remember the verdict so hot
blobs are not re-hashed on every request.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

from aggregation_service.errors import StorageError


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blocking API: call it from an executor, never from the event loop."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise StorageError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.fsync:
            fsync_dir(target.parent)
        with self._lock:
            self._verified.add(digest)
        return digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise StorageError(f"blob {digest} is missing from {self.root}") from exc

    def get(self, digest: str) -> bytes:
        """The blob's bytes, verified against its name (once per process)."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"blob {digest} is missing from {self.root}") from exc
        with self._lock:
            known = digest in self._verified
        if not known:
            actual = sha256_hex(data)
            if actual != digest:
                raise StorageError(f"blob {digest} is corrupt (its content hashes to {actual})")
            with self._lock:
                self._verified.add(digest)
        return data

    def verify(self, digest: str) -> None:
        """Hash the blob now unless this process already has."""
        self.get(digest)

    def read_range(self, digest: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a blob, after the once-per-process verification."""
        with self._lock:
            known = digest in self._verified
        if not known:
            self.verify(digest)
        with self.path(digest).open("rb") as fh:
            fh.seek(start)
            return fh.read(end - start)
