"""State files, the upload queue, the lifecycle and the backoff, without a server."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest

from edge_client.errors import IllegalTransition, StateReadError, StateWriteError
from edge_client.lifecycle import TRANSITIONS, AgentState, Lifecycle
from edge_client.retry import Backoff, RetryInvoker
from edge_client.storage import AtomicWriter, QueuedUpload, StateDir, read_json
from edge_client.testing import drive
from fedge.clock import ManualClock
from fedge.transport import TransportError


def entry(key: str, created: float) -> QueuedUpload:
    return QueuedUpload(key, "as-1", "digits", 3, 32, created, None)


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "a" / "f.json"
    writer = AtomicWriter()
    writer.write_json(path, {"v": 1})
    writer.write_json(path, {"v": 2})
    assert read_json(path) == {"v": 2}
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_disk_full_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    AtomicWriter().write_json(path, {"v": 1})

    def full(p: str, flags: int) -> int:
        fd = os.open(p, flags, 0o600)
        os.write(fd, b'{"v": ')  # part of the data got out before the disk filled
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StateWriteError, match="disk full"):
        AtomicWriter(full).write_json(path, {"v": 2})
    assert read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_corrupt_json_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text('{"state": "trai')
    with pytest.raises(StateReadError, match="corrupt"):
        read_json(path)
    assert not path.exists() and (tmp_path / "status.json.corrupt").exists()


def test_queue_is_ordered_and_survives_a_new_statedir(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    state.enqueue(entry("k-late", 20.0), b"late")
    state.enqueue(entry("k-early", 10.0), b"early")
    again = StateDir(tmp_path)
    again.prepare()
    assert [(e.idempotency_key, p) for e, p in again.queued()] == [
        ("k-early", b"early"), ("k-late", b"late")]
    again.dequeue("k-early")
    assert again.queue_length() == 1
    assert entry("k", 0).headers()["Idempotency-Key"] == "k"


def test_unreadable_queue_entries_are_dropped(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    (tmp_path / "queue" / "bad.json").write_text('{"idempotency_key": 1}')
    (tmp_path / "queue" / "bad.bin").write_bytes(b"x")
    assert list(state.queued()) == []
    assert state.queue_length() == 0


def test_residual_round_trip_and_corruption(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    residual = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    state.save_residual("digits", residual)
    np.testing.assert_array_equal(state.load_residual("digits")["w"], residual["w"])  # type: ignore[index]
    state.residual_path("digits").write_bytes(b"PK\x03\x04garbage")
    assert state.load_residual("digits") is None


def test_a_residual_is_read_back_from_memory_until_its_file_changes(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    state.save_residual("digits", {"w": np.ones(4, np.float32)})
    first = state.load_residual("digits")
    assert first is not None and not first["w"].flags.writeable  # shared: read-only
    assert state.load_residual("digits")["w"] is first["w"]  # type: ignore[index]
    # Another writer replaces the file (a new inode, size and mtime): read from disk.
    other = StateDir(tmp_path)
    other.save_residual("digits", {"w": np.full(8, 2.0, np.float32)})
    np.testing.assert_array_equal(state.load_residual("digits")["w"],  # type: ignore[index]
                                  np.full(8, 2.0, np.float32))
    state.residual_path("digits").unlink()
    assert other.load_residual("digits") is None  # gone on disk: not served from memory


def test_illegal_transition_is_refused_and_history_kept() -> None:
    life = Lifecycle(ManualClock())
    seen: list[tuple[AgentState, AgentState]] = []
    life.add_listener(lambda old, new, why: seen.append((old, new)))
    life.to(AgentState.WAITING_FOR_ELIGIBILITY)
    with pytest.raises(IllegalTransition, match="waiting_for_eligibility → training"):
        life.to(AgentState.TRAINING)
    life.to(AgentState.CHECKING_IN)
    assert seen == [(AgentState.STARTING, AgentState.WAITING_FOR_ELIGIBILITY),
                    (AgentState.WAITING_FOR_ELIGIBILITY, AgentState.CHECKING_IN)]
    assert TRANSITIONS[AgentState.STOPPED] == frozenset()
    # Training is reachable only through checking in and downloading.
    into_training = {s for s, targets in TRANSITIONS.items() if AgentState.TRAINING in targets}
    assert into_training == {AgentState.DOWNLOADING}


def test_full_jitter_backoff_bounds() -> None:
    backoff = Backoff(base_s=2, max_s=30, rng=random.Random(1))
    caps = [2, 4, 8, 16, 30, 30]
    for cap in caps:
        wait = backoff.next_wait()
        assert 0 <= wait <= cap
    assert backoff.next_wait(floor=100) >= 100  # Retry-After is a floor
    backoff.reset()
    assert backoff.attempt == 0


async def test_retry_invoker_retries_then_gives_up() -> None:
    clock = ManualClock()
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(clock.monotonic())
        if len(calls) < 3:
            raise TransportError("down")
        return "ok"

    invoker = RetryInvoker(clock, Backoff(1, 10, random.Random(0)), retry_on=(TransportError,),
                           wait_floor=lambda exc: 5.0)
    assert await drive(clock, invoker.invoke(flaky)) == "ok"
    assert calls[1] - calls[0] >= 5 and calls[2] - calls[1] >= 5

    async def down() -> str:
        raise TransportError("down")

    giving_up = RetryInvoker(clock, Backoff(1, 10, random.Random(0)), retry_on=(TransportError,),
                             max_tries=2)
    with pytest.raises(TransportError):
        await drive(clock, giving_up.invoke(down))
    never = RetryInvoker(clock, Backoff(1, 10, random.Random(0)), retry_on=(TransportError,),
                         should_giveup=lambda exc: True)
    with pytest.raises(TransportError):
        await never.invoke(down)
