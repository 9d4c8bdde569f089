"""The device's side of a secure aggregation round, over the agent's Transport.

A check-in plan with a ``secagg`` section (docs/protocol.md, "Secure
aggregation") replaces the codec upload by the four SecAgg+ exchanges of
:mod:`privacy.secagg`. :class:`SecAggExchange` runs them for one round:

- :meth:`~SecAggExchange.prepare` — POST ``keys``, poll GET ``setup``, POST
  ``shares``, poll GET ``shares`` (before training: none of it depends on
  the update);
- :meth:`~SecAggExchange.submit` — POST ``masked-input`` (the clipped,
  flattened update, fixed-point encoded and masked: 4 bytes per parameter in
  a 32-bit ring, incompressible), poll GET ``unmask``, POST ``unmask``.

Polls follow the server's ``Retry-After`` (204 while a phase is open) and
every step is bounded by the plan's phase deadlines, measured on the agent's
monotonic clock from when the plan arrived. A POST whose answer was lost is
sent again with the same bytes (the service answers a byte-identical replay
like the first). Any refusal ends the round for this device with
:class:`SecAggRoundError`; the next check-in joins a new round.

This module imports :mod:`privacy.secagg` (and so ``cryptography``); the
agent imports it only for a plan that asks for secure aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_client.errors import AgentError, ServerError
from edge_client.protocol import ProtocolClient, check_status, error_code
from fedge.clock import Clock
from fedge.manifest import Manifest
from fedge.transport import Response, TransportError
from privacy.errors import PrivacyError, SecAggError
from privacy.secagg import (
    Message,
    RoundSetup,
    SecAggClient,
    SecAggConfig,
    SharesFor,
    UnmaskRequest,
    decode_message,
    encode_message,
    flatten,
)

PHASES = ("keys", "shares", "inputs", "unmask")
RETRY_S = 1.0  # after a network error, before sending again (within the phase deadline)
MAX_WAIT_S = 30.0  # longest single poll wait, whatever Retry-After says


class SecAggRoundError(AgentError):
    """This device's part in the round ended: the round was abandoned, the
    device was excluded or refused, or a phase deadline passed. ``code`` is
    the service's error code when it gave one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SecAggPlan:
    """The ``secagg`` section of a plan, checked before use."""

    round_id: str
    config: SecAggConfig
    vector_length: int
    layout: tuple[tuple[str, tuple[int, ...]], ...]
    deadlines_s: Mapping[str, float]  # phase → seconds from the plan's arrival
    urls: Mapping[str, str]

    @classmethod
    def parse(cls, data: Any) -> SecAggPlan:
        what = "check-in plan.secagg"
        try:
            if not isinstance(data, Mapping):
                raise TypeError("expected an object")
            deadlines = {p: float(data["deadlines_s"][p]) for p in PHASES}
            if not all(math.isfinite(v) for v in deadlines.values()):
                raise ValueError("non-finite deadline")
            urls = {str(k): str(v) for k, v in data["urls"].items()}
            missing = {"keys", "setup", "shares", "masked-input", "unmask"} - set(urls)
            if missing:
                raise KeyError(f"urls {sorted(missing)}")
            layout = tuple((str(n), tuple(int(x) for x in s)) for n, s in data["layout"])
            plan = cls(
                round_id=str(data["round_id"]),
                config=SecAggConfig.from_dict(data["config"], f"{what}.config"),
                vector_length=int(data["vector_length"]),
                layout=layout,
                deadlines_s=deadlines,
                urls=urls,
            )
        except (KeyError, TypeError, ValueError, AttributeError, PrivacyError) as exc:
            raise ServerError(f"{what}: {exc}", retryable=True) from exc
        if sum(math.prod(s) for _, s in layout) != plan.vector_length:
            raise ServerError(f"{what}: the layout does not add up to vector_length")
        return plan

    def check_manifest(self, manifest: Manifest) -> None:
        mine = tuple((t.name, tuple(t.shape)) for t in manifest.trainable)
        if mine != self.layout:
            raise ServerError(
                f"secure aggregation round {self.round_id}: the plan's tensor layout does not "
                "match the downloaded manifest's trainable tensors", retryable=True
            )


def clip_and_flatten(
    update: Mapping[str, np.ndarray], plan: SecAggPlan
) -> tuple[np.ndarray, float]:
    """The update as one float64 vector in the plan's layout, scaled down to
    L2 ≤ ``clip_norm`` (the fixed-point overflow bound depends on it).
    Returns the vector and its norm before clipping."""
    vector = flatten(update, plan.layout)
    if not np.all(np.isfinite(vector)):
        raise SecAggRoundError("the trained update has non-finite values")
    norm = float(np.sqrt(vector @ vector))
    clip = plan.config.clip_norm
    if norm > clip:
        vector = vector * (clip / norm)
    return vector, norm


@dataclass
class ExchangeStats:
    bytes_up: int = 0
    bytes_down: int = 0
    masked_input_bytes: int = 0
    polls: int = 0
    steps: list[str] = field(default_factory=list)


class SecAggExchange:
    """One device's run through one round (create one per plan)."""

    def __init__(
        self,
        client: ProtocolClient,
        clock: Clock,
        device_id: str,
        plan: SecAggPlan,
        *,
        received_at: float,
        client_factory: Callable[[str], SecAggClient] = SecAggClient,
    ) -> None:
        self.client = client
        self.clock = clock
        self.plan = plan
        # Deadlines on the agent's monotonic clock, from when the plan arrived.
        self.deadline = {p: received_at + s for p, s in plan.deadlines_s.items()}
        self.secagg = client_factory(device_id)
        self.stats = ExchangeStats()
        self._shares: SharesFor | None = None

    # --- HTTP ----------------------------------------------------------------------

    def _headers(self, body: bool) -> dict[str, str]:
        out = self.client._auth()
        if body:
            out["Content-Type"] = "application/octet-stream"
        return out

    async def _send(self, step: str, msg: Message, phase: str) -> None:
        body = encode_message(msg)
        if step == "masked-input":
            self.stats.masked_input_bytes = len(body)
        while True:
            try:
                resp = await self.client.transport.request(
                    "POST", self.plan.urls[step], headers=self._headers(True), body=body
                )
                self.stats.bytes_up += len(body)
                self.stats.bytes_down += len(resp.body)
                check_status(resp, f"secagg {step}")
                self.stats.steps.append(step)
                return
            except TransportError as exc:
                error: Exception = exc
            except ServerError as exc:
                if not exc.retryable:
                    raise SecAggRoundError(str(exc), exc.code) from exc
                error = exc
            wait = RETRY_S
            if isinstance(error, ServerError) and error.retry_after is not None:
                wait = error.retry_after
            if self.clock.monotonic() + wait >= self.deadline[phase]:
                raise SecAggRoundError(f"secagg {step}: the {phase} phase ends before a retry "
                                       f"could succeed ({error})")
            await self.clock.sleep(wait)

    async def _fetch(self, step: str, until: float) -> Message:
        """Poll GET ``step`` until the server has this device's answer."""
        while True:
            resp: Response | None = None
            try:
                resp = await self.client.transport.request(
                    "GET", self.plan.urls[step], headers=self._headers(False)
                )
            except TransportError:
                wait = RETRY_S
            else:
                self.stats.bytes_down += len(resp.body)
                self.stats.polls += 1
                if resp.status == 200:
                    try:
                        return decode_message(resp.body)
                    except SecAggError as exc:
                        raise SecAggRoundError(f"secagg {step}: bad answer: {exc}") from exc
                if resp.status not in {204, 429} and resp.status < 500:
                    code, detail = error_code(resp)
                    raise SecAggRoundError(
                        f"secagg {step}: HTTP {resp.status} {code or ''} {detail}".strip(), code
                    )
                wait = _retry_after(resp) or RETRY_S
            now = self.clock.monotonic()
            if now >= until:
                raise SecAggRoundError(f"secagg {step}: no answer before the phase deadline")
            await self.clock.sleep(min(wait, MAX_WAIT_S, max(0.0, until - now) + RETRY_S))

    def _grace(self, phase: str) -> float:
        """Polls for a phase's answer run until the next phase's deadline."""
        order = list(PHASES)
        nxt = order[min(order.index(phase) + 1, len(order) - 1)]
        return self.deadline[nxt]

    # --- the two halves ---------------------------------------------------------------

    async def prepare(self) -> None:
        """Keys and shares: before training."""
        try:
            await self._send("keys", self.secagg.advertise_keys(), "keys")
            setup = await self._fetch("setup", self._grace("keys"))
            if not isinstance(setup, RoundSetup):
                raise SecAggRoundError(f"secagg setup: got a {type(setup).__name__}")
            await self._send("shares", self.secagg.share_keys(setup), "shares")
            shares = await self._fetch("shares", self._grace("shares"))
            if not isinstance(shares, SharesFor):
                raise SecAggRoundError(f"secagg shares: got a {type(shares).__name__}")
        except SecAggRoundError:
            raise
        except SecAggError as exc:  # the server sent something the protocol forbids
            raise SecAggRoundError(f"secagg: {exc}") from exc
        self._shares = shares

    async def submit(self, vector: np.ndarray) -> None:
        """Masked input, then the unmask shares the server asks for."""
        if self._shares is None:
            raise SecAggRoundError("secagg: submit before prepare")
        try:
            await self._send("masked-input", self.secagg.masked_input(self._shares, vector),
                             "inputs")
            request = await self._fetch("unmask", self._grace("inputs"))
            if not isinstance(request, UnmaskRequest):
                raise SecAggRoundError(f"secagg unmask: got a {type(request).__name__}")
            await self._send("unmask", self.secagg.unmask(request), "unmask")
        except SecAggRoundError:
            raise
        except SecAggError as exc:
            raise SecAggRoundError(f"secagg: {exc}") from exc


def _retry_after(resp: Response) -> float | None:
    value = resp.header("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None
