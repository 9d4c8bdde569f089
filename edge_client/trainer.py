"""Training behind a small interface, with two implementations.

- :class:`ProcessTrainer` (the default on devices) runs the TFLite interpreter
  in a child process (``python -m edge_client.worker``) that speaks a framed
  protocol over its stdin/stdout. A native crash in the runtime kills only the
  child; the agent sees the signal, raises :class:`RuntimeCrash`, reports it at
  the next check-in and backs off. The agent awaits the pipe: its event loop
  never blocks on training.
- :class:`InProcessTrainer` runs the same code in the agent's process, for the
  fleet simulator, where a process per simulated device would be too slow.

Both are driven one batch at a time (:meth:`TrainingSession.step`), so the
agent can re-check eligibility and the deadline between batches and stop
within one batch when a condition lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edge_client.errors import AgentError, DataError, RuntimeCrash, TrainingError
from edge_client.session import (
    _BLOB,
    _HEAD,
    LocalSession,
    StepResult,
    TrainingJob,
    encode_frame,
    job_header,
    local_runtime,
)
from edge_client.storage import arrays_from_bytes, arrays_to_bytes

__all__ = [
    "InProcessTrainer",
    "ProcessTrainer",
    "StepResult",
    "TimedSession",
    "Trainer",
    "TrainingJob",
    "TrainingSession",
    "local_runtime",
]

log = logging.getLogger(__name__)


class TrainingSession(Protocol):
    runtime: str
    data_bytes: int

    async def step(self) -> StepResult | None:
        """Train one batch; None when the plan's batches are exhausted."""
        ...

    async def finish(self) -> dict[str, np.ndarray]:
        """The trained weights (all tensors); ends the session."""
        ...

    async def abort(self) -> None:
        """Stop now and discard the work; safe to call more than once."""
        ...


@runtime_checkable
class TimedSession(TrainingSession, Protocol):
    """A session that knows what each batch costs in time before it sleeps
    it (the simulator's, on a virtual clock). The agent hands it a stretch in
    which nothing it watches can change (no eligibility edge, no deadline),
    and the session trains every batch that *starts* inside it with one wait
    for all of them instead of one per batch: the same batches, the same
    stopping point, the same end time as batch-by-batch stepping.
    Sessions on a real device do not implement it: their batches take the
    time they take, and the agent re-checks between them."""

    async def steps_before(self, until: float) -> list[StepResult]:
        """Train the next batch, and the ones after it while the monotonic
        time at which each would start is before ``until``; return their
        results, [] when the plan's batches are exhausted."""
        ...


class Trainer(Protocol):
    async def start(self, job: TrainingJob) -> TrainingSession: ...

    async def probe_runtime(self) -> str:
        """The TFLite runtime training would use, e.g. ``ai-edge-litert 2.3.0``."""
        ...


class _InProcessSession:
    def __init__(self, local: LocalSession) -> None:
        self._local: LocalSession | None = local
        self.runtime = local.runtime
        self.data_bytes = local.data_bytes

    async def step(self) -> StepResult | None:
        if self._local is None:
            raise TrainingError("training session already ended")
        return self._local.step()

    async def finish(self) -> dict[str, np.ndarray]:
        if self._local is None:
            raise TrainingError("training session already ended")
        weights = self._local.weights()
        self._local = None
        return weights

    async def abort(self) -> None:
        self._local = None


class InProcessTrainer:
    """Trains in the agent's own process (the simulator). A native crash here
    would take the process down; devices use :class:`ProcessTrainer`."""

    def __init__(self, runtime: str | None = None) -> None:
        self.runtime = runtime

    async def start(self, job: TrainingJob) -> TrainingSession:
        return _InProcessSession(LocalSession(job))

    async def probe_runtime(self) -> str:
        return local_runtime(self.runtime)


class _ProcessSession:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.runtime = "unknown"
        self.data_bytes = 0
        self._ended = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _crash(self, during: str) -> RuntimeCrash:
        returncode = await self.proc.wait()
        self._ended = True
        sig = -returncode if returncode < 0 else None
        name = signal.Signals(sig).name if sig else None
        what = f"signal {name}" if name else f"exit code {returncode}"
        return RuntimeCrash(
            f"training worker died during {during} ({what})", signal=sig, returncode=returncode
        )

    async def call(
        self, header: Mapping[str, Any], blob: bytes = b"", *, during: str
    ) -> tuple[dict[str, Any], bytes]:
        if self._ended:
            raise TrainingError("training session already ended")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(encode_frame(header, blob))
            await self.proc.stdin.drain()
            (head_len,) = _HEAD.unpack(await self.proc.stdout.readexactly(_HEAD.size))
            reply = json.loads(await self.proc.stdout.readexactly(head_len))
            (blob_len,) = _BLOB.unpack(await self.proc.stdout.readexactly(_BLOB.size))
            out_blob = await self.proc.stdout.readexactly(blob_len) if blob_len else b""
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            raise await self._crash(during) from exc
        if not reply.get("ok"):
            kind = reply.get("kind")
            message = str(reply.get("error", "unknown worker error"))
            await self.abort()
            raise DataError(message) if kind == "data" else TrainingError(message)
        return reply, out_blob

    async def step(self) -> StepResult | None:
        reply, _ = await self.call({"cmd": "step"}, during="a train step")
        if reply.get("done"):
            return None
        return StepResult(int(reply["examples"]), float(reply["loss"]))

    async def finish(self) -> dict[str, np.ndarray]:
        _, blob = await self.call({"cmd": "finish"}, during="get_weights")
        await self.abort()
        return arrays_from_bytes(blob)

    async def abort(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionResetError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(encode_frame({"cmd": "stop"}))
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


class ProcessTrainer:
    """Trains in ``python -m edge_client.worker`` (``python`` may be another
    interpreter, e.g. one with tflite-runtime and numpy<2)."""

    def __init__(
        self, python: str | None = None, runtime: str | None = None, num_threads: int = 1
    ) -> None:
        self.python = python or sys.executable
        self.runtime = runtime
        self.num_threads = num_threads
        self.last_session: _ProcessSession | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # One BLAS thread: training is the runtime's job, and the agent must stay frugal.
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(self.num_threads))
        # No PYTHONPATH games: another interpreter (``runtime.python``) must have
        # fedge installed itself; pointing it at our site-packages would hand it
        # our NumPy, which tflite-runtime's interpreter cannot load.
        return env

    async def _spawn(self) -> _ProcessSession:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "edge_client.worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=self._env(),
            )
        except OSError as exc:
            raise TrainingError(f"cannot start the training worker {self.python!r}: {exc}") from exc
        return _ProcessSession(proc)

    async def start(self, job: TrainingJob) -> TrainingSession:
        session = await self._spawn()
        self.last_session = session
        header = job_header(job)
        header["runtime"] = job.runtime or self.runtime
        try:
            reply, _ = await session.call(
                header, arrays_to_bytes(job.weights), during="model load"
            )
        except AgentError:
            await session.abort()
            raise
        session.runtime = str(reply.get("runtime", "unknown"))
        session.data_bytes = int(reply.get("data_bytes", 0))
        return session

    async def probe_runtime(self) -> str:
        session = await self._spawn()
        try:
            reply, _ = await session.call(
                {"cmd": "probe", "runtime": self.runtime}, during="runtime probe"
            )
        finally:
            await session.abort()
        return str(reply.get("runtime", "none"))
