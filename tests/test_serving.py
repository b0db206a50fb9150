"""The pyfunc model: logged with the detector's files, registered with an alias, loadable and servable."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_images

from aigi import params, serving
from aigi.data.images import load_rgb, to_model_input
from aigi.inference import predict_proba
from aigi.model import load_detector

NAME = "tiny-detector"


@pytest.fixture(scope="module")
def registered(tiny_model_dir, tmp_path_factory):
    """The tiny model logged and registered in a fresh SQLite store; yields (tracking URI, version)."""
    import mlflow

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=(tmp / "artifacts").as_uri())
    p = params.parse({"mlflow": {"registered_model": NAME, "model_alias": "newest"}, "evaluate": {"threshold": 0.4}})
    with mlflow.start_run(experiment_id=exp):
        version = serving.log_and_register(tiny_model_dir, p)
    yield uri, version
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imgs")
    return [*write_images(tmp, 2, (40, 50), "png"), *write_images(tmp, 2, (32, 32), "jpg", seed=1)]


def _expected(model_dir: Path, files: list[Path]) -> np.ndarray:
    detector, _ = load_detector(model_dir)
    pixels = to_model_input([load_rgb(f) for f in files], detector.image_size)
    return predict_proba(detector, pixels, 8)


def test_registered_with_alias_signature_and_no_pickles(registered, tiny_model_dir):
    import mlflow

    uri, version = registered
    assert version.name == NAME and "newest" in version.aliases
    client = mlflow.MlflowClient(uri)
    assert client.get_model_version_by_alias(NAME, "newest").version == version.version
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@newest", tracking_uri=uri))
    mlmodel = (local / "MLmodel").read_text()
    assert "python_model" not in {p.name for p in local.iterdir()}  # models from code: nothing pickled
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pt"))
    assert (local / "artifacts" / "finetuned" / "head.safetensors").is_file()
    assert (local / "code" / "aigi" / "serving.py").is_file()
    assert "serving_input_example.json" in {p.name for p in local.iterdir()}
    sig = mlflow.models.get_model_info(f"models:/{NAME}@newest").signature
    assert sig.inputs.input_names() == ["image"] and sig.outputs.input_names() == ["p_fake", "label", "error"]
    assert sig.params.params[0].name == "threshold" and sig.params.params[0].default == 0.4
    assert "aigi.serving_model" in mlmodel or "serving_model.py" in mlmodel


def test_pyfunc_predicts_png_and_jpeg_paths_bytes_and_base64(registered, tiny_model_dir, images, monkeypatch):
    import mlflow

    monkeypatch.setenv(serving.ALLOWED_ROOT_ENV, str(images[0].parent))  # paths only with the opt-in
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@newest")
    expected = _expected(tiny_model_dir, images)
    out = model.predict(pd.DataFrame({"image": [str(f) for f in images]}))
    assert list(out.columns) == ["p_fake", "label", "error"] and (out["error"] == "").all()
    np.testing.assert_allclose(out["p_fake"], expected, rtol=1e-5)
    assert list(out["label"]) == ["FAKE" if p >= 0.4 else "REAL" for p in expected]  # the signature's default
    raw = [f.read_bytes() for f in images]
    as_b64 = [base64.b64encode(b).decode() for b in raw]
    np.testing.assert_allclose(model.predict(pd.DataFrame({"image": raw}))["p_fake"], expected, rtol=1e-5)
    np.testing.assert_allclose(model.predict(pd.DataFrame({"image": as_b64}))["p_fake"], expected, rtol=1e-5)
    low = model.predict(pd.DataFrame({"image": as_b64}), params={"threshold": 1e-9})
    assert set(low["label"]) == {"FAKE"}


def test_pyfunc_answers_every_row_and_names_the_bad_ones(registered, tiny_model_dir, images):
    """Eight images, two of them broken: eight rows in order, the good ones scored as alone, the bad ones null
    with their reason."""
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@newest")
    good = [base64.b64encode(f.read_bytes()).decode() for f in images] * 2
    cells = [*good[:3], base64.b64encode(b"not an image").decode(), *good[3:6], "/no/such/file.png"]
    out = model.predict(pd.DataFrame({"image": cells}))
    assert len(out) == 8 and list(out.columns) == ["p_fake", "label", "error"]
    bad = [3, 7]
    assert out["p_fake"].isna().tolist() == [i in bad for i in range(8)]
    assert [out["p_fake"][i] for i in bad] == [None, None]  # null, not NaN: the JSON answer stays valid JSON
    assert [out["label"][i] for i in bad] == ["", ""]
    assert out["error"][3] == "not a recognised image format"
    assert out["error"][7].startswith("not base64-encoded image bytes")
    scored = [i for i in range(8) if i not in bad]
    assert (out["error"][scored] == "").all()
    np.testing.assert_allclose(out["p_fake"][scored].astype(float), np.tile(_expected(tiny_model_dir, images), 2)[
        :6], rtol=1e-5)


@pytest.mark.parametrize("request_input", [
    pd.DataFrame({"picture": [serving.example_png()]}),  # no image column
    ["iVBORw0KGgo" * 50],  # not a table
    "iVBORw0KGgo" * 50,
])
def test_pyfunc_refuses_a_malformed_request_in_one_line_without_the_payload(request_input):
    import mlflow

    model = serving.DetectorModel()
    model.detector, model.root = None, None  # refused before the model is used
    with pytest.raises(mlflow.exceptions.MlflowException) as err:
        model.predict(None, request_input)
    err.value.message = f"Failed to predict data '{request_input}'"  # what MLflow's scoring server does to it
    line = json.loads(err.value.serialize_as_json())["message"]
    assert "\n" not in line and "iVBORw0KGgo" not in line and "column 'image'" in line, line
    assert err.value.get_http_status_code() == 400


def _spy_on_files(monkeypatch) -> list[tuple[str, str]]:
    """(call, path) for every open and stat from now on (Python's open, os.open, os.stat, os.lstat)."""
    import builtins
    import io

    touched: list[tuple[str, str]] = []

    def spy(name, real):
        def wrapper(path, *args, **kwargs):
            touched.append((name, os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else repr(path)))
            return real(path, *args, **kwargs)
        return wrapper

    for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat")):
        monkeypatch.setattr(owner, name, spy(name, getattr(owner, name)))
    return touched


def test_pyfunc_reads_no_server_file_by_default(registered, monkeypatch):
    import mlflow

    monkeypatch.delenv(serving.ALLOWED_ROOT_ENV, raising=False)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@newest")
    touched = _spy_on_files(monkeypatch)
    answers = list(model.predict(pd.DataFrame({"image": ["/etc/hostname", "/no/such/file"]}))["error"])
    assert answers[0].startswith("not base64-encoded image bytes")
    assert not [t for t in touched if "hostname" in t[1] or "no/such" in t[1]]  # nothing read, nothing stat'ed
    assert answers[0] == answers[1]  # an existing file and a missing one get the same refusal


def test_pyfunc_reads_paths_only_under_the_allowed_root(registered, images, tmp_path, monkeypatch):
    import mlflow

    root = images[0].parent
    outside = tmp_path / "secret.png"
    outside.write_bytes(images[0].read_bytes())
    (root / "link.png").unlink(missing_ok=True)
    (root / "link.png").symlink_to(outside)
    monkeypatch.setenv(serving.ALLOWED_ROOT_ENV, str(root))
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@newest")
    assert len(model.predict(pd.DataFrame({"image": [str(images[0]), images[1].name]}))) == 2
    touched = _spy_on_files(monkeypatch)
    paths = [str(outside), f"{root}/../{outside.parent.name}/secret.png", "link.png", str(root / "missing.png")]
    out = model.predict(pd.DataFrame({"image": paths}))
    assert out["p_fake"].isna().all() and len(set(out["error"])) == 1, list(out["error"])
    assert not [t for t in touched if t[0] == "open" and t[1].endswith("secret.png")]  # resolved, never opened


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_mlflow_models_serve_answers_invocations(registered, tiny_model_dir, images, tmp_path):
    uri, _ = registered
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@newest",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not ready in 120 s: {log.read_text()[-3000:]}"
            try:
                if _request(f"{base}/ping", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        rows = [[base64.b64encode(f.read_bytes()).decode()] for f in images]
        status, body = _request(f"{base}/invocations", {"dataframe_split": {"columns": ["image"], "data": rows}})
        assert status == 200, body[:2000]
        predictions = json.loads(body)["predictions"]
        np.testing.assert_allclose([r["p_fake"] for r in predictions], _expected(tiny_model_dir, images), rtol=1e-5)
        assert {r["label"] for r in predictions} <= {"REAL", "FAKE"}
        broken = [*rows[:2], ["eA=="], *rows[2:]]  # one broken image among good ones: every row answered, 200
        status, body = _request(f"{base}/invocations", {"dataframe_split": {"columns": ["image"], "data": broken}})
        assert status == 200, body[:2000]
        predictions = json.loads(body, parse_constant=pytest.fail)["predictions"]  # strict JSON: no NaN
        assert len(predictions) == len(broken) and predictions[2]["p_fake"] is None
        assert predictions[2]["error"] == "not a recognised image format"
        np.testing.assert_allclose([r["p_fake"] for i, r in enumerate(predictions) if i != 2],
                                   _expected(tiny_model_dir, images), rtol=1e-5)
        status, body = _request(f"{base}/invocations", {"dataframe_split": {"columns": ["picture"], "data": rows}})
        assert status == 400 and json.loads(body)["message"] == (
            "input needs a column 'image' (image bytes or base64); the request has none"), body[:2000]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_aigi_predict_with_a_registry_uri(registered, tiny_model_dir, images, monkeypatch, capsys):
    from aigi import cli
    from aigi.predict import predict_paths

    uri, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(sys, "argv", ["aigi", "predict", *map(str, images), "--model", f"models:/{NAME}@newest",
                                      "--format", "jsonl"])
    cli.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    detector, _ = load_detector(tiny_model_dir)
    expected = list(predict_paths(detector, images))
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    np.testing.assert_allclose([r["p_fake"] for r in rows], [r["p_fake"] for r in expected], atol=1e-6)
    monkeypatch.setattr(sys, "argv", ["aigi", "predict", str(images[0]), "--model", "models:/no-such-model@newest"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1 and "cannot load the MLflow model models:/no-such-model@newest" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("alias", ["latest", "Latest", "v3", "has space"])
def test_reserved_or_invalid_alias_is_refused(alias):
    from aigi.errors import AigiError

    with pytest.raises(AigiError, match=r"mlflow\.model_alias"):
        params.parse({"mlflow": {"model_alias": alias}})


def test_pyfunc_of_several_generators_answers_generator_and_class_probabilities(tiny_multigen_model_dir, images):
    from conftest import MULTIGEN_CLASSES

    from aigi.inference import class_probs
    from aigi.predict import output_columns

    model = serving.DetectorModel()
    model.detector, _ = load_detector(tiny_multigen_model_dir)
    model.root = None  # as load_context leaves it without AIGI_SERVE_ALLOWED_ROOT: bytes only
    out = model.predict(None, pd.DataFrame({"image": [f.read_bytes() for f in images]}))
    columns = ["p_fake", "label", "generator", *(f"p_{c}" for c in MULTIGEN_CLASSES)]
    assert list(out.columns) == [*columns, "error"] and columns == output_columns(MULTIGEN_CLASSES)
    probs = class_probs(model.detector, to_model_input([load_rgb(f) for f in images], model.detector.image_size), 8)
    np.testing.assert_allclose(out[[f"p_{c}" for c in MULTIGEN_CLASSES]].to_numpy(), probs, rtol=1e-5)
    np.testing.assert_allclose(out["p_fake"], 1 - probs[:, 0], rtol=1e-5)
    assert serving.signature(0.5, MULTIGEN_CLASSES).outputs.input_names() == [*columns, "error"]
    assert serving.signature(0.5, ["REAL", "FAKE"]).outputs.input_names() == ["p_fake", "label", "error"]


def test_one_registry_version_per_set_of_weights(registered, tiny_model_dir, tmp_path):
    import shutil

    import mlflow

    uri, _ = registered
    p = params.parse({"mlflow": {"registered_model": "once", "model_alias": "newest"}})
    client = mlflow.MlflowClient(uri)
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    (other / "detector.json").write_text((other / "detector.json").read_text().replace("{", '{"retrained": 1, ', 1))
    exp = mlflow.create_experiment("once", artifact_location=(tmp_path / "artifacts").as_uri())
    versions = []
    for folder in (tiny_model_dir, tiny_model_dir, other, tiny_model_dir):  # e.g. evaluate re-run, then retrained
        with mlflow.start_run(experiment_id=exp):
            versions.append(int(serving.log_and_register(folder, p).version))
    assert versions == [1, 1, 2, 1]
    assert len(client.search_model_versions("name = 'once'")) == 2
    assert int(client.get_model_version_by_alias("once", "newest").version) == 2  # a reused version moves no alias
    assert client.get_model_version("once", "1").tags[serving.WEIGHTS_TAG] == serving.weights_sha256(tiny_model_dir)
