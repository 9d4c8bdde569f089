"""The dashboard in a real browser: Debian's headless Chromium driven by
Playwright against a real ``serve`` process on loopback that real device
updates feed (an exported TFLite model trained on digits, codec frames
uploaded through the device API).

The test refuses a wrong token (no cookie), logs in and checks the cookie
flags on the real Set-Cookie header, watches a new version appear and the
accuracy chart gain a point without a reload, promotes that version through
the confirmation dialog (a cancelled dialog changes nothing), pauses and
resumes, rolls back (refused with the service's reason, then done), and logs
out. Screenshots go to test-artifacts/dashboard/.

Chromium comes from ``make system-deps`` (scripts/system-deps.sh). In CI a
missing browser or playwright package fails the test; elsewhere it skips.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import quantization
from fedge.manifest import MANIFEST_FILE, MODEL_FILE, Manifest
from fedge.runtime import TrainableModel
from tests.aggregation_service.conftest import OPERATOR
from tests.aggregation_service.realserver import (
    REPO,
    ServerProcess,
    start_server,
    stop_server,
    write_config,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
OP = {"Authorization": f"Bearer {OPERATOR}"}
MODEL = "digits"


def require_browser() -> None:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (run `make system-deps`)")
    if missing:
        message = "the dashboard browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


class Fleet:
    """A scripted fleet: real devices enrolled through the API that download
    the plan's model, train it with the TFLite runtime on their own slice of
    digits and upload the codec frame of their delta."""

    def __init__(self, api: Any, export_dir: Path) -> None:
        self.api = api
        self.export_dir = export_dir
        self.manifest = Manifest.from_json((export_dir / MANIFEST_FILE).read_bytes())
        self.x, y = digits()
        self.y = y.astype(self.manifest.label.dtype)
        self.devices: list[dict[str, str]] = []

    def push_with_eval_data(self) -> None:
        d = self.export_dir
        r = self.api.post(
            f"/v1/models/{MODEL}/versions",
            headers=OP,
            multipart={
                "manifest": {
                    "name": MANIFEST_FILE,
                    "mimeType": "application/json",
                    "buffer": (d / MANIFEST_FILE).read_bytes(),
                },
                "model": {
                    "name": MODEL_FILE,
                    "mimeType": "application/octet-stream",
                    "buffer": (d / MODEL_FILE).read_bytes(),
                },
            },
        )
        assert r.status == 201, r.text()
        buf = io.BytesIO()
        np.savez(buf, x=self.x[1500:], y=self.y[1500:])
        r = self.api.put(
            f"/v1/models/{MODEL}/eval-data",
            headers={**OP, "Content-Type": "application/octet-stream"},
            data=buf.getvalue(),
        )
        assert r.status == 200, r.text()

    def enroll(self, profiles: list[str]) -> None:
        r = self.api.post("/v1/enrollment-tokens", headers=OP, data={"uses": len(profiles)})
        assert r.status == 201, r.text()
        token = r.json()["token"]
        for name in profiles:
            r = self.api.post(
                "/v1/devices/enroll",
                data={"enrollment_token": token, "profile": {"name": name, "memory_mb": 4096}},
            )
            assert r.status == 201, r.text()
            self.devices.append({"Authorization": "Bearer " + r.json()["device_token"]})

    def plan(self, auth: dict[str, str]) -> dict[str, Any]:
        body = {
            "model": MODEL,
            "eligible": True,
            "reasons": [],
            "runtime": "ai-edge-litert",
            "profile": {"name": "raspberry-pi-4", "memory_mb": 4096},
        }
        for _ in range(200):  # pace steering admits a share of check-ins
            answer = self.api.post("/v1/devices/checkin", headers=auth, data=body).json()
            if answer["action"] == "train":
                plan: dict[str, Any] = answer["plan"]
                return plan
        raise AssertionError(f"pace steering never admitted the device: {answer}")

    def train_and_upload(self, index: int) -> None:
        auth = self.devices[index]
        plan = self.plan(auth)
        graph = self.api.get(plan["urls"]["model"], headers=auth).body()
        weights = quantization.decode_weights(
            self.api.get(plan["urls"]["weights"], headers=auth).body()
        )
        model = TrainableModel(graph, self.manifest)
        model.set_weights(weights)
        part = slice(index * 300, (index + 1) * 300)
        x, y = self.x[part], self.y[part]
        for _ in range(3):
            for start in range(0, len(x), 32):
                model.train_step(x[start : start + 32], y[start : start + 32], lr=0.1)
        trained = model.get_weights()
        delta = {t.name: trained[t.name] - weights[t.name] for t in self.manifest.trainable}
        frame = quantization.encode(
            delta, quantization.CodecSpec(density=0.5, bits=8), seed=index
        ).payload
        r = self.api.post(
            "/v1/devices/updates",
            headers={
                **auth,
                "Content-Type": "application/octet-stream",
                "Idempotency-Key": str(uuid.uuid4()),
                "Fedge-Assignment": plan["assignment_id"],
                "Fedge-Model": MODEL,
                "Fedge-Base-Version": str(plan["version"]),
                "Fedge-Examples": str(len(x)),
            },
            data=frame,
        )
        assert r.status == 202, r.text()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = write_config(
        tmp_path / "server.yaml",
        tmp_path / "data",
        rate_limit={"rate_per_s": 1000.0, "burst": 1000},
        training={"buffer_size": 2, "pace_min_retry_s": 1.0, "client": {"learning_rate": 0.1}},
    )
    process = start_server(tmp_path / "data", config, tmp_path)
    yield process
    assert stop_server(process) == 0


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def confirm(page: Any, expected_text: str) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
    expect(page.get_by_test_id("confirm-text")).to_contain_text(expected_text)
    page.get_by_test_id("confirm-ok").click()


@pytest.mark.slow
def test_dashboard_in_a_real_browser(server: ServerProcess, exported_mlp: Path) -> None:
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    with sync_playwright() as p:
        api = p.request.new_context(base_url=server.url)
        fleet = Fleet(api, exported_mlp)
        fleet.push_with_eval_data()
        fleet.enroll(["raspberry-pi-4", "raspberry-pi-4", "pixel-6"])
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # Uncaught script errors and Content-Security-Policy violations fail the test.
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.goto(server.url + "/")

            # A wrong token: 401, the form again with the error, and no cookie.
            page.fill("#token", "not-the-operator-token-000")
            with page.expect_response(lambda r: r.url.endswith("/login")) as refused:
                page.click("button[type=submit]")
            assert refused.value.status == 401
            assert refused.value.header_value("set-cookie") is None
            expect(page.get_by_test_id("login-error")).to_have_text("Wrong operator token.")
            assert page.context.cookies() == []
            shot(page, "login-refused")

            # The right token: a session cookie with the promised flags.
            page.fill("#token", OPERATOR)
            with page.expect_response(
                lambda r: r.url.endswith("/login") and r.request.method == "POST"
            ) as accepted:
                page.click("button[type=submit]")
            assert accepted.value.status == 303
            set_cookie = accepted.value.header_value("set-cookie")
            assert set_cookie is not None and OPERATOR not in set_cookie
            flags = {f.strip() for f in set_cookie.split(";")}
            assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= flags
            assert "Secure" not in flags  # plain HTTP; test_tls_cookie covers HTTPS
            (cookie,) = page.context.cookies()
            assert cookie["name"] == "fedge_session" and cookie["httpOnly"]
            assert cookie["sameSite"] == "Strict"

            # v1, evaluated on the held-out digits: one point on the chart.
            expect(page.get_by_test_id("model-name")).to_have_text(MODEL)
            expect(page.locator("#chart-accuracy circle")).to_have_count(1)
            expect(page.locator("#versions tbody tr")).to_have_count(1)
            expect(page.get_by_test_id("devices-profile")).to_contain_text("pixel-6")
            page.evaluate("window.__sameDocument = true")
            shot(page, "dashboard-v1")

            # Two devices train and upload: K = 2 publishes v2, which is evaluated.
            fleet.train_and_upload(0)
            fleet.train_and_upload(1)
            expect(page.locator("#versions tr[data-version='2']")).to_be_visible()
            expect(page.locator("#chart-accuracy circle")).to_have_count(2)
            expect(page.get_by_test_id("accepted")).to_have_text("2")
            expect(page.get_by_test_id("published")).to_have_text("1")
            assert page.evaluate("window.__sameDocument === true")  # polled, not reloaded
            info = api.get(f"/v1/models/{MODEL}", headers=OP).json()
            v2 = info["versions"][1]
            assert v2["base_version"] == 1 and v2["num_updates"] == 2
            accuracy = page.locator("#chart-accuracy circle[data-version='2']")
            assert float(accuracy.get_attribute("data-value") or "nan") == pytest.approx(
                v2["metrics"]["accuracy"]
            )
            shot(page, "dashboard-v2")

            # Promote v2: a cancelled dialog changes nothing; a confirmed one does.
            page.get_by_test_id("promote-2").click()
            expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
            page.get_by_test_id("confirm-cancel").click()
            expect(page.get_by_test_id("confirm-dialog")).to_be_hidden()
            assert api.get(f"/v1/models/{MODEL}", headers=OP).json()["live_version"] != 2
            page.get_by_test_id("promote-2").click()
            confirm(page, "Promote v2")
            expect(page.get_by_test_id("status")).to_have_text("v2 is live")
            assert api.get(f"/v1/models/{MODEL}", headers=OP).json()["live_version"] == 2
            expect(page.locator("#versions tr.live")).to_have_attribute("data-version", "2")
            expect(page.get_by_test_id("fact-live")).to_have_text("v2")

            # Pause and resume.
            page.get_by_test_id("pause").click()
            confirm(page, "Pause training")
            expect(page.get_by_test_id("status")).to_have_text(f"{MODEL} paused")
            assert api.get(f"/v1/models/{MODEL}", headers=OP).json()["paused"] is True
            expect(page.get_by_test_id("resume")).to_be_visible()
            expect(page.get_by_test_id("fact-state")).to_have_text("paused")
            shot(page, "paused")
            page.get_by_test_id("resume").click()
            confirm(page, "Resume training")
            expect(page.get_by_test_id("status")).to_have_text(f"{MODEL} resumed")
            assert api.get(f"/v1/models/{MODEL}", headers=OP).json()["paused"] is False

            # Roll back: refused while nothing was live before v2 (the service's
            # reason is shown), then back to v2 after v1 was promoted over it.
            page.get_by_test_id("rollback").click()
            confirm(page, "Roll digits back")
            expect(page.get_by_test_id("status")).to_contain_text("no earlier promoted version")
            expect(page.get_by_test_id("status")).to_have_class("error")
            page.get_by_test_id("promote-1").click()
            confirm(page, "Promote v1")
            expect(page.get_by_test_id("fact-live")).to_have_text("v1")
            page.get_by_test_id("rollback").click()
            confirm(page, "Roll digits back")
            expect(page.get_by_test_id("status")).to_have_text(f"{MODEL} rolled back")
            info = api.get(f"/v1/models/{MODEL}", headers=OP).json()
            assert (info["live_version"], info["training_version"]) == (2, 2)
            expect(page.get_by_test_id("fact-live")).to_have_text("v2")

            # Log out: back to the form, the cookie gone, the data closed.
            page.get_by_test_id("logout").click()
            expect(page.get_by_test_id("login-form")).to_be_visible()
            assert [c for c in page.context.cookies() if c["name"] == "fedge_session"] == []
            assert page.request.get(server.url + "/dashboard/api/state").status == 401
            shot(page, "logged-out")
            assert problems == []
        finally:
            browser.close()
            api.dispose()
