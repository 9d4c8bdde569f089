"""Training on Ray workers (``fedge simulate --ray`` / ``--ray-address``).

Each Ray worker is an actor holding one interpreter of the exported model.
A simulated device's training session sends every batch to an actor
(weights in, trained weights and loss out) and awaits the result; while it
is outstanding the simulator's event loop counts it as work in progress, so
virtual time does not advance (see :mod:`.driver`). Devices map to actors by
index, so one device's batches always go to the same worker. Virtual time is
charged exactly as in process: the compute cost comes from the profile, not
from how long Ray took.

Ray is imported only here, and only when asked for.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from device_profiles.errors import SimulationError
from device_profiles.sim.driver import loop_jobs


class _Worker:
    """The actor body (wrapped with ``ray.remote`` at pool start)."""

    def __init__(self, model: bytes, manifest_json: str) -> None:
        from fedge.manifest import Manifest  # noqa: PLC0415 — runs in the Ray worker
        from fedge.runtime import TrainableModel  # noqa: PLC0415

        self.model = TrainableModel(model, Manifest.from_json(manifest_json))

    def step(self, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float,
             mu: float | None) -> tuple[dict[str, np.ndarray], float]:
        self.model.set_weights(weights)
        loss = self.model.train_step(x, y, lr, mu)
        return self.model.get_weights(), loss


class RayPool:
    """A fixed set of actors for one model graph."""

    def __init__(self, model: bytes, manifest_json: str, *, address: str | None,
                 workers: int) -> None:
        try:
            import ray  # noqa: PLC0415
        except ImportError as exc:
            raise SimulationError(f"--ray needs the ray package: {exc}") from exc
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            try:
                if address:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SimulationError(f"cannot start or reach Ray ({address or 'local'}): {exc}"
                                      ) from exc
        actor: Any = ray.remote(num_cpus=1)(_Worker)
        self.actors: list[Any] = [actor.remote(model, manifest_json) for _ in range(workers)]
        self.calls = 0

    async def step(self, device_index: int, weights: dict[str, np.ndarray], x: np.ndarray,
                   y: np.ndarray, *, lr: float, mu: float | None
                   ) -> tuple[dict[str, np.ndarray], float]:
        actor: Any = self.actors[device_index % len(self.actors)]
        jobs = loop_jobs()
        if jobs is not None:
            jobs.begin()
        try:
            ref: Any = actor.step.remote(weights, x, y, lr, mu)
            result: tuple[dict[str, np.ndarray], float] = await asyncio.wrap_future(
                ref.future())
        finally:
            if jobs is not None:
                jobs.end()
        self.calls += 1
        return result

    def shutdown(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        if self._owns:
            self._ray.shutdown()
