"""The local data is checked against the model before a device enrolls
(`fedge agent init`), at any time (`fedge agent check`) and before each task;
label shapes Keras accepts are accepted. Real processes against the real
service; the enrollment-check route against a real `fedge serve`."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_client.config import DataConfig
from edge_client.data import conform, open_source
from edge_client.datacheck import check_data
from edge_client.errors import DataError
from fedge.manifest import InputSpec, LabelSpec, Manifest, TensorSpec
from tests.aggregation_service.conftest import OPERATOR as SERVE_OPERATOR
from tests.aggregation_service.realserver import (
    register_synthetic,
    start_server,
    stop_server,
    write_config,
)
from tests.edge_client.conftest import LiveService
from tests.edge_client.test_cli import fedge


def manifest(label: LabelSpec, loss: str, input_shape: tuple[int, ...] = (4,)) -> Manifest:
    return Manifest(
        name="m", tensors=(TensorSpec("w", (4, 1)),), input=InputSpec(input_shape),
        label=label, loss=loss, optimizer={}, hyperparameters={}, sha256="0" * 64,
    )


BINARY = manifest(LabelSpec((1,), "float32", None), "binary_crossentropy")
MULTI = manifest(LabelSpec((3,), "float32", None), "binary_crossentropy")
SPARSE = manifest(LabelSpec((), "int32", 5), "sparse_categorical_crossentropy")


@pytest.mark.parametrize("y_shape", [(6,), (6, 1)])
def test_a_binary_head_takes_labels_of_shape_n_or_n_1(y_shape: tuple[int, ...]) -> None:
    y = (np.arange(6) % 2).reshape(y_shape)
    x, y2 = conform(np.zeros((6, 4)), y, BINARY, "d")
    assert y2.shape == (6, 1) and y2.dtype == np.float32 and x.dtype == np.float32


def test_a_binary_npz_with_flat_labels_loads(tmp_path: Path) -> None:
    # Refused as "not a readable .npz" before: the shape error was taken for a read error.
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 4), np.float32), y=np.arange(6) % 2)
    data = open_source(DataConfig("npz", path=str(tmp_path / "d.npz")), BINARY)
    assert data.batches(6, 1, None, 0).__next__()[1].shape == (6, 1)


def test_a_multi_label_head_takes_n_k_and_refuses_n() -> None:
    y = np.eye(3)[np.arange(6) % 3]
    assert conform(np.zeros((6, 4)), y, MULTI, "d")[1].shape == (6, 3)
    with pytest.raises(DataError, match=r"multi-label head\): y of shape \(n, 3\)"):
        conform(np.zeros((6, 4)), np.arange(6) % 2, MULTI, "d")


@pytest.mark.parametrize(
    ("x", "y", "model", "message"),
    [
        (np.zeros((4, 3)), np.zeros(4), SPARSE, r"examples have shape \(3,\).*expects \(4,\)"),
        (np.zeros((4, 4)), np.array([0, 1, 5, 2]), SPARSE, r"in \[0, 5\), found 0\.\.5"),
        (np.zeros((4, 4)), np.eye(5)[:4], SPARSE, "look one-hot"),
        (np.zeros((4, 4)), np.array([0.5, 1, 0, 0]), SPARSE, "integer class ids"),
        (np.zeros((4, 4)), np.array([0, 2, 1, 0]), BINARY, r"must be in \[0, 1\], found 0\.\.2"),
        (np.zeros((4, 4)), np.array(["a", "b", "c", "d"]), BINARY, "y must be numeric"),
        (np.zeros((4, 4)), np.zeros(3), BINARY, "x has 4 rows but y has 3"),
    ],
)
def test_data_that_does_not_fit_says_what_was_expected(
    x: np.ndarray, y: np.ndarray, model: Manifest, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        conform(x, y, model, "d")


def test_wrong_npz_keys_are_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((4, 4)), labels=np.zeros(4))
    with pytest.raises(DataError, match=r"expected arrays 'x' \(features\) and 'y'.*'X'"):
        check_data(DataConfig("npz", path=str(tmp_path)), SPARSE)


def test_the_check_covers_every_batch_of_a_callable(tmp_path: Path) -> None:
    # A module name no other test uses: imported modules stay in sys.modules.
    (tmp_path / "checkdata_batches.py").write_text(
        "import numpy as np\n"
        "def batches(batch_size):\n"
        "    yield np.zeros((2, 4)), np.array([0, 1])\n"
        "    yield np.zeros((2, 4)), np.array([0, 9])\n"
    )
    config = DataConfig(
        "callable", callable="checkdata_batches:batches", python_path=(str(tmp_path),)
    )
    try:
        with pytest.raises(DataError, match=r"batch 1: labels must be in \[0, 5\)"):
            check_data(config, SPARSE)
    finally:
        sys.modules.pop("checkdata_batches", None)


# --- fedge agent init / check against the real service ---------------------------------


def _digits_variant(tmp_path: Path, digits_dir: Path, name: str, **arrays: Any) -> Path:
    out = tmp_path / name
    out.mkdir()
    with np.load(digits_dir / "part0.npz") as npz:
        x, y = npz["x"], npz["y"]
    np.savez(out / "d.npz", **{k: v(x, y) for k, v in arrays.items()})
    return out


BAD_DATA = {
    "feature-count": ({"x": lambda x, y: x[:, :60], "y": lambda x, y: y}, r"\(60,\)"),
    "labels-out-of-range": ({"x": lambda x, y: x, "y": lambda x, y: y + 1},
                            r"labels must be in \[0, 10\)"),
    "npz-keys": ({"X": lambda x, y: x, "Y": lambda x, y: y}, "expected arrays 'x'"),
}


@pytest.mark.parametrize(("arrays", "message"), BAD_DATA.values(), ids=BAD_DATA.keys())
async def test_init_refuses_data_that_does_not_fit_before_spending_the_token(
    service: LiveService, tmp_path: Path, digits_dir: Path, arrays: dict[str, Any], message: str
) -> None:
    token = await service.enroll_token(uses=1)
    bad = _digits_variant(tmp_path, digits_dir, "bad", **arrays)
    common = ["--server", service.url, "--enroll-token", token, "--model", "digits",
              "--state-dir", str(tmp_path / "state"), "--config", str(tmp_path / "a.yaml")]
    code, out, err = await fedge("agent", "init", "--data", str(bad), *common)
    assert code == 2, out + err
    assert __import__("re").search(message, err) and "Traceback" not in err
    assert not (tmp_path / "a.yaml").exists() and not (tmp_path / "state/identity.json").exists()
    # The one-use token was not spent: the same init with fitting data enrolls.
    code, out, err = await fedge("agent", "init", "--data", str(digits_dir), *common)
    assert code == 0, out + err
    assert "data fits model 'digits' version 1: 600 examples of shape (64,)" in out


async def test_init_refuses_an_unknown_model_before_spending_the_token(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    token = await service.enroll_token(uses=1)
    common = ["--server", service.url, "--enroll-token", token, "--data", str(digits_dir),
              "--state-dir", str(tmp_path / "state"), "--config", str(tmp_path / "a.yaml")]
    code, out, err = await fedge("agent", "init", "--model", "digitz", *common)
    assert code == 2, out + err
    assert "has no model 'digitz'" in err and "enrollment token is unused" in err
    assert not (tmp_path / "state/identity.json").exists()
    code, out, err = await fedge("agent", "init", "--model", "digits", *common)
    assert code == 0, out + err


async def test_agent_check_reruns_the_check(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    from tests.edge_client.test_cli import init

    config = await init(service, tmp_path, digits_dir)
    code, out, err = await fedge("agent", "check", "--config", str(config))
    assert code == 0, out + err
    assert "data fits model 'digits' version 1: 600 examples" in out
    with np.load(digits_dir / "part1.npz") as npz:
        np.savez(digits_dir / "part1.npz", x=npz["x"][:, :10], y=npz["y"])
    code, out, err = await fedge("agent", "check", "--config", str(config))
    assert code == 2 and "part1.npz" in err and r"(10,)" in err, out + err


def _post(url: str, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def test_enroll_check_route_on_a_real_server(tmp_path: Path) -> None:
    config = write_config(tmp_path / "server.yaml", tmp_path / "data")
    await register_synthetic(config, {"w": (4, 3)})
    server = start_server(tmp_path / "data", config, tmp_path)
    try:
        status, body = _post(f"{server.url}/v1/enrollment-tokens", {"uses": 1},
                             token=SERVE_OPERATOR)
        assert status == 201
        token = body["token"]
        check = f"{server.url}/v1/devices/enroll/check"
        for _ in range(3):  # asking does not spend the token
            status, body = _post(check, {"enrollment_token": token, "model": "m"})
            assert status == 200, body
        assert body["version"] == 1 and body["manifest"]["input"]["shape"] == [4]
        assert _post(check, {"enrollment_token": token, "model": "n"})[1]["error"]["code"] == (
            "unknown_model")
        assert _post(check, {"enrollment_token": "et-wrong", "model": "m"})[0] == 401
        assert _post(check, {"model": "m"})[0] == 401  # neither token
        assert _post(check, {"enrollment_token": 3, "model": "m"})[0] == 400
        status, enrolled = _post(f"{server.url}/v1/devices/enroll", {"enrollment_token": token})
        assert status == 201  # the one use was still there
        status, body = _post(check, {"model": "m"}, token=enrolled["device_token"])
        assert status == 200 and body["version"] == 1  # an enrolled device asks with its token
        status, body = _post(check, {"enrollment_token": token, "model": "m"})
        assert status == 401 and body["error"]["code"] == "bad_enrollment_token"  # used up
    finally:
        assert stop_server(server) == 0
