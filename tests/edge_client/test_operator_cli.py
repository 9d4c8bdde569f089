"""The operator's command line as a new user meets it: every subcommand in
``--help`` with a description, ``--server`` documented and forgiving, an
enrollment token that can be copied, held-out data uploaded without curl,
``data_dir`` read from server.yaml. Real processes against a real
``fedge serve``."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from edge_client.data import ArrayData
from fedge.cli import build_parser
from fedge.server_url import normalise_server_url
from tests.aggregation_service.conftest import OPERATOR
from tests.aggregation_service.realserver import (
    REPO,
    ServerProcess,
    start_server,
    stop_server,
    write_config,
)
from tests.aggregation_service.test_process import fedge

ENV = {"FEDGE_OPERATOR_TOKEN": OPERATOR}
# Commands whose every option must say what it is for (the ones a user of
# the operator and agent guides types).
DOCUMENTED = ("serve", "push", "enroll-token", "eval-data", "models", "agent", "simulate", "demo")


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                 ) -> list[tuple[tuple[str, ...], str | None, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                out.append(((*path, name), helps.get(name), sub))
                out += _subcommands(sub, (*path, name))
    return out


def test_every_subcommand_is_listed_with_a_description() -> None:
    commands = _subcommands(build_parser())
    assert len(commands) > 20
    hidden = [" ".join(p) for p, text, _ in commands if not text]
    assert hidden == []
    for path, _, sub in commands:
        if path[0] in DOCUMENTED:
            bare = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
            assert bare == [], f"fedge {' '.join(path)}: options without help {bare}"


def test_models_help_lists_every_action() -> None:
    done = subprocess.run([sys.executable, "-m", "fedge", "models", "--help"], cwd=REPO,
                          capture_output=True, text=True, check=True, timeout=60)
    for action in ("list", "show", "promote", "rollback", "pause", "resume", "config"):
        assert re.search(rf"^\s+{action}\s+\S", done.stdout, flags=re.M), done.stdout
    done = subprocess.run([sys.executable, "-m", "fedge", "push", "--help"], cwd=REPO,
                          capture_output=True, text=True, check=True, timeout=60)
    assert "bare host:port means http://" in " ".join(done.stdout.split())


@pytest.mark.parametrize(
    ("given", "url"),
    [("127.0.0.1:8080", "http://127.0.0.1:8080"), ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
     ("http://h:1/v1/", "http://h:1"), ("https://h/fedge/v1", "https://h/fedge"),
     ("localhost:8080/", "http://localhost:8080"), (" http://h:1 ", "http://h:1")],
)
def test_server_urls_are_normalised(given: str, url: str) -> None:
    assert normalise_server_url(given) == url


@pytest.mark.parametrize("bad", ["", "ftp://h", "http://", "h:port", "http://h/?q=1"])
def test_bad_server_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"URL|host|http"):
        normalise_server_url(bad)


@pytest.fixture
def server(tmp_path: Path) -> object:
    config = write_config(tmp_path / "server.yaml", tmp_path / "data")
    proc = start_server(tmp_path / "data", config, tmp_path)
    yield proc
    assert stop_server(proc) == 0


@pytest.mark.slow
def test_server_flag_forms_enroll_token_and_eval_data(
    server: ServerProcess, tmp_path: Path, exported_mlp: Path
) -> None:
    port = server.port
    # Pushed with a bare host:port, listed with a trailing /v1: the same server.
    r = fedge("push", "--server", f"127.0.0.1:{port}", "--model", "digits", str(exported_mlp),
              env=ENV)
    assert r.returncode == 0, r.stderr
    r = fedge("models", "list", "--server", f"http://127.0.0.1:{port}/v1", env=ENV)
    assert r.returncode == 0, r.stderr
    assert [m["model"] for m in json.loads(r.stdout)["models"]] == ["digits"]
    r = fedge("models", "list", "--server", "ftp://127.0.0.1", env=ENV)
    assert r.returncode == 2 and "argument --server" in r.stderr and "Traceback" not in r.stderr

    # The token alone on stdout, the expiry in ISO 8601 on stderr; --json for machines.
    r = fedge("enroll-token", "--server", f"127.0.0.1:{port}", "--uses", "3", env=ENV)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"et-[\w-]+\n", r.stdout), r.stdout
    assert re.search(r"3 uses, expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r.stderr), r.stderr
    r = fedge("enroll-token", "--server", server.url, "--json", env=ENV)
    answer = json.loads(r.stdout)
    assert answer["uses"] == 1 and answer["expires_at"] > time.time()

    # Held-out data without curl; the service evaluates the version on it.
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "heldout.npz", x=(x[-200:] / 16).astype("float32"), y=y[-200:])
    r = fedge("eval-data", "put", "--server", server.url, "digits", str(tmp_path / "heldout.npz"),
              env=ENV)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shown = json.loads(fedge("models", "show", "--server", server.url, "digits",
                                 env=ENV).stdout)
        if "accuracy" in json.dumps(shown):
            break
        time.sleep(0.5)
    assert "accuracy" in json.dumps(shown), shown
    np.savez(tmp_path / "wrong.npz", features=np.zeros(3))
    r = fedge("eval-data", "put", "--server", server.url, "digits", str(tmp_path / "wrong.npz"),
              env=ENV)
    assert r.returncode == 2 and "expected arrays 'x' and 'y'" in r.stderr
    r = fedge("eval-data", "put", "--server", server.url, "digits", str(tmp_path / "none.npz"),
              env=ENV)
    assert r.returncode == 2 and "no such file" in r.stderr


@pytest.mark.slow
def test_serve_reads_data_dir_from_server_yaml(tmp_path: Path) -> None:
    data = tmp_path / "from-yaml"
    config = write_config(tmp_path / "server.yaml", data)
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedge", "serve", "--config", str(config), "--port", "0",
         "--port-file", str(port_file)],
        cwd=REPO, env={**__import__("os").environ, **ENV, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = fedge("models", "list", "--server", f"127.0.0.1:{port_file.read_text()}", env=ENV)
        assert r.returncode == 0, r.stderr
        assert (data / "fedge.sqlite3").exists()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    r = fedge("serve", "--port", "0", env=ENV)
    assert r.returncode == 2 and "--data-dir is required" in r.stderr


def test_max_examples_caps_the_task_not_each_epoch() -> None:
    data = ArrayData(np.zeros((100, 2), np.float32), np.zeros(100))
    seen = sum(len(x) for x, _ in data.batches(10, epochs=5, max_examples=250, seed=0))
    assert seen == 250  # five epochs of 100 would be 500; per epoch, 5 × 100
    guide = (REPO / "docs" / "operator-guide.md").read_text(encoding="utf-8")
    row = next(ln for ln in guide.splitlines() if ln.startswith("| `client.max_examples`"))
    assert "in total over all its epochs" in row and "per epoch |" not in row


def test_devices_list_and_revoke(server: ServerProcess) -> None:
    url = ("--server", server.url)
    token = fedge("enroll-token", *url, "--uses", "2", env=ENV).stdout.strip()

    async def enroll() -> list[str]:  # what two devices' agents do
        async with aiohttp.ClientSession() as s:
            ids = []
            for _ in range(2):
                async with s.post(
                    f"{server.url}/v1/devices/enroll", json={"enrollment_token": token}
                ) as r:
                    ids.append((await r.json())["device_id"])
            return ids

    first, second = asyncio.run(enroll())
    r = fedge("devices", "list", *url, env=ENV)
    assert r.returncode == 0, r.stderr
    assert {d["device_id"] for d in json.loads(r.stdout)["devices"]} == {first, second}
    r = fedge("devices", "revoke", *url, first, env=ENV)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "revoked", r.stderr
    r = fedge("devices", "list", *url, "--state", "revoked", env=ENV)
    assert [d["device_id"] for d in json.loads(r.stdout)["devices"]] == [first]
    r = fedge("devices", "revoke", *url, "dev-nope", env=ENV)
    assert r.returncode == 2 and "unknown_device" in r.stderr
    r = fedge("devices", "list", *url, "--limit", "0", env=ENV)
    assert r.returncode == 2 and "--limit" in r.stderr
