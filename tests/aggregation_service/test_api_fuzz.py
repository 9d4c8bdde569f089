"""A bounded schemathesis pass over every operation of /openapi.json against
a real ``fedge serve``, with each credential kind: no 5xx, every answer's
status, content type, headers and body as the document says."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.aggregation_service.sweep import KINDS, run_sweep

pytestmark = pytest.mark.slow


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    result = run_sweep(tmp_path, max_examples=20, seed=1)
    for kind in result.kinds:
        assert kind.exit_code == 0 and kind.failures == 0, kind.output[-6000:]
        assert kind.cases >= 1000, (kind.kind, kind.cases)  # every operation was reached
    assert [k.kind for k in result.kinds] == list(KINDS)
    assert result.server_alive and result.server_5xx == 0
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
