"""A hostile check-in plan (a broken server, or a man in the middle of plain
HTTP) must never make the agent write outside its state directory, nor train
a model it is not configured for.

The plan comes from the REAL service; a wrapper rewrites one field of it, so
every other field (hashes, URLs) is genuine and, on code without the checks,
the agent downloads, trains and writes its cache and residual where the
rewritten name points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_client.agent import PACED, REFUSED_PLAN, UPLOADED
from edge_client.errors import ConfigError, UnsafeNameError
from edge_client.paths import inside, safe_name, safe_sha256
from edge_client.storage import StateDir
from fedge.transport import Response, Transport
from tests.edge_client.conftest import MODEL, AgentFactory, agent_config


class RewritePlan:
    """Passes everything through, but sets ``plan[field] = value`` in check-in answers."""

    def __init__(self, inner: Transport, field: str, value: Any) -> None:
        self.inner = inner
        self.field = field
        self.value = value
        self.rewritten = 0

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None) -> Response:
        resp = await self.inner.request(method, path, headers=headers, body=body)
        if path == "/v1/devices/checkin" and resp.status == 200:
            data = json.loads(resp.body)
            if data.get("action") == "train":
                data["plan"][self.field] = self.value
                self.rewritten += 1
                return Response(resp.status, json.dumps(data).encode(), resp.headers)
        return resp

    async def close(self) -> None:
        await self.inner.close()


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.exists() else set()


HOSTILE = {
    "traversal": ("model", "../../../outside"),
    "deep-traversal": ("model", "../" * 12 + "tmp/fedge-outside"),
    "absolute": ("model", "/tmp/fedge-absolute-outside"),
    "other-model": ("model", "someone-elses-model"),
    "odd-unicode": ("model", "dig\u0131ts\u202e"),
    "fullwidth-dots": ("model", "\uff0e\uff0e"),
    "nul": ("model", "digits\x00../../x"),
    "dots": ("model", ".."),
    "graph-sha-traversal": ("graph_sha256", "../../../outside-graph"),
    "weights-sha-traversal": ("weights_sha256", "../../outside-weights"),
    "foreign-url": ("urls", {"manifest": "http://evil.example/m", "model": "/m",
                             "weights": "/w"}),
}


@pytest.mark.parametrize(("field", "value"), HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_plan_is_refused_and_writes_nothing_outside(
    make_agent: AgentFactory, tmp_path: Path, field: str, value: Any
) -> None:
    outside_before = _files(tmp_path)
    tmp_before = set(os.listdir("/tmp"))
    rewriters: list[RewritePlan] = []

    def hostile(inner: Transport) -> Transport:
        rewriters.append(RewritePlan(inner, field, value))
        return rewriters[0]

    agent = await make_agent(transport=hostile)
    try:
        result = await agent.run_cycle()
    finally:
        await agent.close()
    assert rewriters[0].rewritten == 1
    assert result.outcome == REFUSED_PLAN, result
    assert result.wait_s > 0  # a backoff, not a tight loop
    assert result.examples == 0
    state = agent.state.root.resolve()
    created = {p.resolve() for p in _files(tmp_path) - outside_before}
    escaped = sorted(p for p in created if not p.is_relative_to(state)
                     and not p.is_relative_to((tmp_path / "service").resolve()))
    assert escaped == []
    assert {n for n in os.listdir("/tmp") if "outside" in n} <= {
        n for n in tmp_before if "outside" in n}
    # Nothing of the plan was cached or trained on inside the state dir either.
    assert not list((state / "cache" / "weights").rglob("*.npz"))
    assert not list((state / "residual").iterdir())
    assert agent.state.queue_length() == 0


async def test_the_agent_trains_again_once_the_plans_are_genuine(
    make_agent: AgentFactory,
) -> None:
    rewriters: list[RewritePlan] = []

    def hostile(inner: Transport) -> Transport:
        rewriters.append(RewritePlan(inner, "model", "../../../outside"))
        return rewriters[0]

    agent = await make_agent(transport=hostile)
    try:
        assert (await agent.run_cycle()).outcome == REFUSED_PLAN
        rewriters[0].field = "unused"  # the man in the middle goes away
        outcomes = []
        for _ in range(30):  # pace steering admits probabilistically: ask again
            agent._next_checkin_at = 0.0
            outcomes.append((await agent.run_cycle()).outcome)
            if outcomes[-1] != PACED:
                break
        assert outcomes[-1] == UPLOADED, outcomes
    finally:
        await agent.close()


@pytest.mark.parametrize(
    "name",
    ["..", ".", "...", "", "a/b", "/abs", "a\\b", "a\x00b", "\u00e9", "x" * 65, "a b", None, 3],
)
def test_unsafe_names_are_refused(name: object) -> None:
    with pytest.raises(UnsafeNameError):
        safe_name(name, "model")


@pytest.mark.parametrize("name", ["digits", "my-model_v2", "m.1", ".hidden", "A" * 64])
def test_safe_names_pass(name: str) -> None:
    assert safe_name(name, "model") == name


def test_only_lowercase_hex_sha256_passes() -> None:
    good = "ab" * 32
    assert safe_sha256(good, "sha") == good
    for bad in ("AB" * 32, good[:-1], good + "0", "../" + good[3:], None):
        with pytest.raises(UnsafeNameError):
            safe_sha256(bad, "sha")


def test_a_symlink_planted_in_the_state_dir_cannot_redirect_a_write(tmp_path: Path) -> None:
    import numpy as np

    state = StateDir(tmp_path / "state")
    state.prepare()
    target = tmp_path / "elsewhere.npz"
    (state.root / "residual" / "digits.npz").symlink_to(target)
    with pytest.raises(UnsafeNameError):
        state.save_residual("digits", {"w": np.zeros(3, np.float32)})
    assert not target.exists()
    with pytest.raises(UnsafeNameError):
        inside(state.root, state.root / "residual" / ".." / ".." / "x")
    assert inside(state.root, state.root / "residual" / "m.npz").parent.name == "residual"


def test_a_config_naming_an_unsafe_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model: '\.\./x' is not a safe name"):
        agent_config(tmp_path, "http://127.0.0.1:9", tmp_path, model="../x")
    assert agent_config(tmp_path, "http://127.0.0.1:9", tmp_path).model == MODEL
