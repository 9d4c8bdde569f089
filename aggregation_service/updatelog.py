"""The append-only update log: an update is acknowledged only once it is here.

Layout: ``log/<start offset, 20 digits>.log`` segments. A position in the log
is a global byte offset, so "replay from the checkpoint" is one number per
model. Each record::

    b"FUL1" | u32 header length | u32 body length | u32 crc32(header+body)
    | header (JSON: model, update id, idempotency key, device, base version,
      staleness, weight, …) | body (the device's codec frame, byte for byte)

Group commit: :meth:`UpdateLog.append` assigns the record its offset at once
(so the caller's order *is* the log order) and queues it; one flusher task
writes everything queued and fsyncs once, then wakes every waiter of that
batch. While one fsync is in flight the next batch forms, so concurrent
uploads share fsyncs and the event loop never waits on the disk.

Recovery: :meth:`UpdateLog.open` scans the segments; a torn record at the
very end (a crash in the middle of a write, never acknowledged) is cut off;
a bad record anywhere else is corruption and stops the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aggregation_service.blobs import fsync_dir
from aggregation_service.errors import StorageError

MAGIC = b"FUL1"
_HEAD = struct.Struct("<4sIII")
SEGMENT_SUFFIX = ".log"


@dataclass(frozen=True)
class LogRecord:
    offset: int  # global offset of this record
    end: int  # global offset of the next record
    header: dict[str, Any]
    body: bytes


def encode_record(header: dict[str, Any], body: bytes) -> bytes:
    return _framed(_encode_header(header), body)


def _encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()


def _framed(head: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(head))
    return _HEAD.pack(MAGIC, len(head), len(body), crc) + head + body


def _segment_name(start: int) -> str:
    return f"{start:020d}{SEGMENT_SUFFIX}"


def _read_records(path: Path, start: int, *, from_pos: int = 0) -> Iterator[LogRecord | int]:
    """Yield records of one segment; on a bad or torn record yield its position (int) and stop."""
    with path.open("rb") as fh:
        fh.seek(from_pos)
        pos = from_pos
        while True:
            head = fh.read(_HEAD.size)
            if not head:
                return
            if len(head) < _HEAD.size:
                yield pos
                return
            magic, hlen, blen, crc = _HEAD.unpack(head)
            if magic != MAGIC:
                yield pos
                return
            payload = fh.read(hlen + blen)
            if len(payload) < hlen + blen or zlib.crc32(payload) != crc:
                yield pos
                return
            try:
                header = json.loads(payload[:hlen])
            except ValueError:
                yield pos
                return
            end = pos + _HEAD.size + hlen + blen
            yield LogRecord(start + pos, start + end, header, payload[hlen:])
            pos = end


@dataclass
class _Pending:
    # Framed (checksum, copy into one record) on the writer thread: only the
    # header's JSON is needed on the event loop to fix the record's length.
    head: bytes
    body: bytes
    roll_to: int | None  # start a new segment at this offset before writing
    future: asyncio.Future[None]


class UpdateLog:
    def __init__(
        self, directory: Path, *, fsync: bool = True, segment_bytes: int = 64 << 20
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._segments: list[int] = []  # start offsets, ascending
        self._end = 0  # offset the next record gets
        self._segment_pos = 0  # bytes in the current (last) segment
        self._file: BinaryIO | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        # One writer thread: writes and fsyncs happen in order, off the event loop.
        self._executor: Executor = ThreadPoolExecutor(1, thread_name_prefix="fedge-log")
        self._lock = threading.Lock()
        self.fsyncs = 0  # measurements: how many fsyncs, how many records
        self.records_written = 0

    # --- recovery (blocking) -------------------------------------------------------

    def open(self) -> int:
        """Scan the log, cut a torn tail, open the last segment for appends.
        Returns the end offset."""
        self.directory.mkdir(parents=True, exist_ok=True)
        starts = sorted(
            int(p.name[: -len(SEGMENT_SUFFIX)])
            for p in self.directory.glob(f"*{SEGMENT_SUFFIX}")
            if p.name[: -len(SEGMENT_SUFFIX)].isdigit()
        )
        if not starts:
            starts = [0]
            (self.directory / _segment_name(0)).touch()
            if self.fsync:
                fsync_dir(self.directory)
        self._segments = starts
        for i, start in enumerate(starts):
            path = self.directory / _segment_name(start)
            last = i == len(starts) - 1
            valid_end = 0
            for item in _read_records(path, start):
                if isinstance(item, int):
                    if not last:
                        raise StorageError(
                            f"update log segment {path} is corrupt at byte {item}; "
                            "restore the data directory from a backup"
                        )
                    # A torn write at the tail: it was never acknowledged.
                    with path.open("r+b") as fh:
                        fh.truncate(item)
                        os.fsync(fh.fileno())
                    valid_end = item
                    break
                valid_end = item.end - start
            if last:
                self._end = start + valid_end
                self._segment_pos = valid_end
        self._file = (self.directory / _segment_name(starts[-1])).open("ab")
        return self._end

    def replay(self, from_offset: int) -> Iterator[LogRecord]:
        """Every record at or after ``from_offset`` (a record boundary), in order."""
        for i, start in enumerate(self._segments):
            nxt = self._segments[i + 1] if i + 1 < len(self._segments) else None
            if nxt is not None and nxt <= from_offset:
                continue
            pos = max(0, from_offset - start)
            for item in _read_records(self.directory / _segment_name(start), start, from_pos=pos):
                if isinstance(item, int):
                    raise StorageError(f"update log is corrupt at offset {start + item}")
                if item.offset >= self._end:
                    return
                yield item

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    @property
    def end(self) -> int:
        return self._end

    # --- appends (event loop) -------------------------------------------------------

    def append(self, header: dict[str, Any], body: bytes) -> tuple[int, int, asyncio.Future[None]]:
        """Queue a record; returns (offset, end offset, future resolved once durable).
        Call from the event loop; the record's place in the log is fixed on return."""
        if self._failed is not None:
            raise StorageError(f"update log is unusable after a write error: {self._failed}")
        head = _encode_header(header)
        size = _HEAD.size + len(head) + len(body)
        roll_to = None
        if self._segment_pos > 0 and self._segment_pos + size > self.segment_bytes:
            roll_to = self._end
            self._segments.append(roll_to)
            self._segment_pos = 0
        offset = self._end
        self._end += size
        self._segment_pos += size
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(head, body, roll_to, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        return offset, self._end, future

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(self._executor, self._write_batch, batch)
            except BaseException as exc:  # a disk error: fail this batch and every later one
                self._failed = exc
                error = StorageError(f"update log write failed: {exc}")
                for item in batch + self._pending:
                    if not item.future.done():
                        item.future.set_exception(error)
                self._pending = []
                return
            for item in batch:
                if not item.future.done():
                    item.future.set_result(None)

    def _write_batch(self, batch: list[_Pending]) -> None:
        assert self._file is not None
        chunk: list[bytes] = []
        for item in batch:
            if item.roll_to is not None:
                self._file.write(b"".join(chunk))
                chunk = []
                self._sync_file()
                self._file.close()
                self._file = (self.directory / _segment_name(item.roll_to)).open("ab")
                if self.fsync:
                    fsync_dir(self.directory)
            chunk.append(_framed(item.head, item.body))
        self._file.write(b"".join(chunk))
        self._sync_file()
        self.records_written += len(batch)

    def _sync_file(self) -> None:
        assert self._file is not None
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
            self.fsyncs += 1

    async def drain(self) -> None:
        """Wait until everything queued so far is durable (or failed)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    # --- housekeeping ---------------------------------------------------------------

    def prune(self, below: int) -> int:
        """Delete segments wholly before ``below`` (the lowest checkpoint of any
        model). Blocking. Returns how many segments were removed."""
        removed = 0
        while len(self._segments) > 1 and self._segments[1] <= below:
            start = self._segments.pop(0)
            (self.directory / _segment_name(start)).unlink(missing_ok=True)
            removed += 1
        return removed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._executor.shutdown(wait=True)
