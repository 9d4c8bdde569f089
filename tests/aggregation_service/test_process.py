"""The real command line against real server processes on loopback: TLS with
a self-signed certificate, `fedge push` / `models` / `enroll-token`, and
clear exits for a user's mistakes."""

from __future__ import annotations

import datetime
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.aggregation_service.conftest import OPERATOR
from tests.aggregation_service.realserver import REPO, start_server, stop_server, write_config


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.slow
async def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = write_config(tmp_path / "server.yaml", tmp_path / "data")
    server = start_server(
        tmp_path / "data",
        config,
        tmp_path,
        scheme="https",
        extra_args=("--tls-cert", str(cert), "--tls-key", str(key)),
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/healthz", ssl=context) as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with session.get(
                f"{server.url}/v1/models",
                ssl=context,
                headers={"Authorization": f"Bearer {OPERATOR}"},
            ) as r:
                assert (await r.json()) == {"models": []}
            # Plain HTTP to the TLS port gets no answer, and an untrusting client refuses.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{server.url}/healthz") as r:
                    pass
    finally:
        assert stop_server(server) == 0


def fedge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


@pytest.mark.slow
def test_cli_against_a_real_server(tmp_path: Path, exported_mlp: Path) -> None:
    config = write_config(tmp_path / "server.yaml", tmp_path / "data", log_json=True)
    server = start_server(tmp_path / "data", config, tmp_path)
    env = {"FEDGE_OPERATOR_TOKEN": OPERATOR}
    try:
        url = ("--server", server.url)
        r = fedge("push", *url, "--model", "digits", str(exported_mlp), env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["version"] == 1
        r = fedge("models", "list", *url, env=env)
        assert [m["model"] for m in json.loads(r.stdout)["models"]] == ["digits"]
        r = fedge(
            "models",
            "config",
            *url,
            "digits",
            "--set",
            "buffer_size=4",
            "--set",
            "optimizer.name=fedavgm",
            env=env,
        )
        assert r.returncode == 0, r.stderr
        config_now = json.loads(r.stdout)
        assert config_now["buffer_size"] == 4 and config_now["optimizer"]["name"] == "fedavgm"
        r = fedge("models", "config", *url, "digits", "--set", "buffer_size=0", env=env)
        assert r.returncode == 2 and "bad_config" in r.stderr and "buffer_size" in r.stderr
        r = fedge("models", "promote", *url, "digits", "1", env=env)
        assert json.loads(r.stdout)["live_version"] == 1
        r = fedge("models", "pause", *url, "digits", env=env)
        assert json.loads(r.stdout)["paused"] is True
        r = fedge("enroll-token", *url, "--uses", "5", "--json", env=env)
        assert json.loads(r.stdout)["uses"] == 5
        r = fedge("models", "show", *url, "nope", env=env)
        assert r.returncode == 2 and "unknown_model" in r.stderr
        r = fedge("models", "list", *url, "--token", "wrong-token-0000000000")
        assert r.returncode == 2 and "unauthorized" in r.stderr
        r = fedge("push", *url, "--model", "x", str(tmp_path), env=env)
        assert r.returncode == 2 and "manifest.json" in r.stderr
    finally:
        assert stop_server(server) == 0
    # JSON-lines logs.
    lines = [
        json.loads(line)
        for line in (tmp_path / "server.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any("pushed version 1" in line["message"] for line in lines)
    # Unreachable server, missing token, bad config: exit 2 with a message.
    r = fedge("models", "list", "--server", server.url, env=env)
    assert r.returncode == 2 and "cannot reach" in r.stderr
    r = fedge("models", "list", "--server", server.url, env={"FEDGE_OPERATOR_TOKEN": ""})
    assert r.returncode == 2 and "no operator token" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  staleness_exponent: -1\n")
    r = fedge("serve", "--data-dir", str(tmp_path / "d2"), "--config", str(bad), env=env)
    assert r.returncode == 2 and "training.staleness_exponent" in r.stderr
    r = fedge("serve", "--data-dir", str(tmp_path / "d2"), env={"FEDGE_OPERATOR_TOKEN": ""})
    assert r.returncode == 2 and "no operator token" in r.stderr
    r = fedge("serve", "--data-dir", str(tmp_path / "d2"), "--tls-cert", "c.pem", env=env)
    assert r.returncode == 2 and "tls" in r.stderr.lower()
