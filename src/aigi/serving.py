"""The detector as an MLflow pyfunc model: logged with its saved files as artifacts, registered, servable.

Input: a DataFrame with an `image` column whose cells are raw image bytes or base64 text of the
encoded file (what a JSON request to `mlflow models serve` carries). A server never reads its own
disk because a request says so: file paths are accepted only when the process that loads the model
sets `AIGI_SERVE_ALLOWED_ROOT` to a folder, and then only for files under it (symlinks resolved).
Output: one row per input row: `p_fake` and `label`, and for a model with several generators also
`generator` and `p_<CLASS>` per class (`aigi.predict.output_columns`), then `error`. A cell that is not a
readable image is answered in its own row (scores null, `label` empty, `error` says why), the others are
scored; only a request malformed as a whole (no `image` column, not a table) is refused, in one line
that does not repeat the input. The decision threshold is a predict-time param whose default is the one
saved with the model (chosen in finetune for `evaluate.target_fpr`), else `evaluate.threshold`. The
model's artifacts are the folder
`save_detector` wrote (safetensors and JSON, nothing pickled); `load_context` loads it with
`load_detector`, and the `aigi` package travels with the model as code, so `--env-manager local`
serving needs only the libraries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

import aigi
from aigi.calibration import decision_threshold
from aigi.classes import DETECTION
from aigi.data.images import BadImage, load_rgb
from aigi.errors import AigiError, one_line
from aigi.params import MAX_IMAGE_PIXELS, Params
from aigi.predict import answer, output_columns, predict_images

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stage logs, not a terminal
import mlflow
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

INPUT_COLUMN = "image"
ARTIFACT = "detector"
MODEL_NAME = "model"  # the logged model's name within the run

MAX_PATH_CHARS = 4096
ALLOWED_ROOT_ENV = "AIGI_SERVE_ALLOWED_ROOT"  # opt-in, read when the model loads: paths under it may be read
# What the model imports when it loads (pins without local version tags such as +cpu).
REQUIREMENTS = ("mlflow", "torch", "torchvision", "open_clip_torch", "safetensors", "numpy", "pandas", "pillow",
                "pydantic", "pyyaml", "tqdm")


def allowed_root() -> Path | None:
    """The folder whose files requests may name (`AIGI_SERVE_ALLOWED_ROOT`), or None: bytes only."""
    root = os.environ.get(ALLOWED_ROOT_ENV, "").strip()
    if not root:
        return None
    resolved = Path(root).expanduser().resolve()
    if not resolved.is_dir():
        raise AigiError(f"{ALLOWED_ROOT_ENV}={root} is not a folder; point it at the images' folder or unset it")
    return resolved


def _file_under(value: str, root: Path) -> Path | None:
    """`value` as a file inside `root` (relative paths are taken from `root`), after resolving symlinks
    and `..`; None for anything outside it or not a file, so both get the same answer."""
    if len(value) >= MAX_PATH_CHARS or "\0" in value:
        return None
    try:
        path = (root / value).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
    except (OSError, ValueError):
        return None


def decode_cell(value: Any, root: Path | None = None) -> np.ndarray:
    """One input cell -> RGB array: image bytes or base64 text (a `data:` URL prefix is allowed); with
    `root`, also a path to a file under it. Any other path is never touched: it fails as bad base64."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return load_rgb(bytes(value), MAX_IMAGE_PIXELS)
    if not isinstance(value, str):
        raise BadImage(f"unsupported value of type {type(value).__name__}; give image bytes or base64")
    if root is not None and (path := _file_under(value, root)) is not None:
        return load_rgb(path, MAX_IMAGE_PIXELS)
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        where = f"a file under {ALLOWED_ROOT_ENV}" if root is not None else f"a file path ({ALLOWED_ROOT_ENV} unset)"
        raise BadImage(f"not base64-encoded image bytes, nor {where}") from None
    return load_rgb(data, MAX_IMAGE_PIXELS)


_LOADED: dict[tuple, tuple[Any, dict[str, Any]]] = {}  # this process's detectors, by folder and file stamps


def cached_detector(folder: Path) -> tuple[Any, dict[str, Any]]:
    """`load_detector(folder)`, once per process for the same files: a Spark executor's Python worker runs
    one task per partition and `mlflow.pyfunc.spark_udf` loads the model in each; the weights are read
    and built once. Says on stderr when it loads (the executors' log), so loads can be counted."""
    import time

    from aigi import device
    from aigi.model import load_detector

    folder = folder.resolve()
    stamps = tuple(sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                          for f in folder.rglob("*") if f.is_file()))
    key = (str(folder), stamps)
    if key not in _LOADED:
        start = time.perf_counter()
        _LOADED[key] = load_detector(folder, device.resolve("auto"))
        print(f"aigi: loaded the detector from {folder} in {time.perf_counter() - start:.2f} s (pid {os.getpid()})",
              file=sys.stderr, flush=True)
    return _LOADED[key]


ERROR_COLUMN = "error"  # per row: why that cell could not be scored; empty for a scored row


class RequestRefused(mlflow.exceptions.MlflowException):
    """A request malformed as a whole: HTTP 400 with this one line. MLflow's scoring server rewrites the
    `message` of an exception raised by predict to repeat the whole input (the base64 of every image);
    this class keeps the line as written."""

    def __init__(self, line: str) -> None:
        self._line = line
        super().__init__(line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:  # the server's rewrite is ignored on purpose
        pass


def as_frame(model_input: Any) -> pd.DataFrame:
    """The request as a table with an `image` column, or `RequestRefused` naming what is wrong (never its content)."""
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, dict):
        try:
            frame = pd.DataFrame(model_input)
        except (ValueError, TypeError):
            raise RequestRefused(f"input columns must be of equal length; give a table with a column "
                                 f"'{INPUT_COLUMN}' of image bytes or base64") from None
    else:
        raise RequestRefused(f"input must be a table with a column '{INPUT_COLUMN}' (image bytes or base64), "
                             f"not {type(model_input).__name__}")
    if INPUT_COLUMN not in frame.columns:
        raise RequestRefused(f"input needs a column '{INPUT_COLUMN}' (image bytes or base64); the request has none")
    return frame


def answers(classes: list[str], rows: list[tuple], threshold: float) -> pd.DataFrame:
    """`predict_images` rows -> the output table, one row each. A failed row has null scores, empty text
    columns and its reason in `error`; a scored row has an empty `error` (empty, not null, in the text
    columns: `mlflow.pyfunc.spark_udf` would turn a null into the text "None")."""
    columns = [*output_columns(classes), ERROR_COLUMN]
    out = pd.DataFrame([answer(classes, p, threshold) | {ERROR_COLUMN: ""} if p is not None
                        else {ERROR_COLUMN: err} for _, p, err in rows], columns=columns, index=range(len(rows)))
    for column in columns:
        if out[column].dtype.kind == "f":
            if out[column].isna().any():  # null, not NaN: NaN is not valid JSON
                out[column] = out[column].astype(object).where(out[column].notna(), None)
        else:
            out[column] = out[column].fillna("")
    return out


class DetectorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a saved detector folder (the `detector` artifact)."""

    def load_context(self, context: Any) -> None:
        self.detector, self.meta = cached_detector(Path(context.artifacts[ARTIFACT]))
        self.root = allowed_root()

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a schema from them
        frame = as_frame(model_input)
        threshold = float((params or {}).get("threshold", decision_threshold(self.detector.threshold, 0.5)))
        rows = list(predict_images(self.detector, list(frame[INPUT_COLUMN]),
                                   lambda v: decode_cell(v, self.root), batch_size=64))
        return answers(self.detector.classes, rows, threshold)


def example_png() -> str:
    """Base64 of a small PNG: the input example stored with the model (valid on any machine)."""
    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((32, 32), 128, np.uint8)), axis=-1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def signature(threshold: float, classes: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        # optional: a request without it reaches predict, which refuses it in one line (MLflow's own
        # schema check would answer with the whole payload)
        inputs=Schema([ColSpec("string", INPUT_COLUMN, required=False)]),
        outputs=Schema([ColSpec("string" if c in ("label", "generator") else "double", c)
                        for c in output_columns(classes)] + [ColSpec("string", ERROR_COLUMN, required=False)]),
        params=ParamSchema([ParamSpec("threshold", "double", threshold)]),
    )


def saved_classes(model_dir: Path) -> list[str]:
    return json.loads((Path(model_dir) / "detector.json").read_text()).get("classes") or list(DETECTION)


def saved_threshold(model_dir: Path) -> float | None:
    """The decision threshold chosen in finetune for evaluate.target_fpr, or None (then evaluate.threshold)."""
    return json.loads((Path(model_dir) / "detector.json").read_text()).get("threshold")


def requirements() -> list[str]:
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def pyfunc_arguments(model_dir: Path, threshold: float, example: bool = True) -> dict[str, Any]:
    """What `mlflow.pyfunc.log_model` and `save_model` take to make the pyfunc model of a saved detector
    folder. `example`: store an input example (MLflow then runs the model on it once, to validate it)."""
    return {
        "python_model": str(Path(__file__).with_name("serving_model.py")),  # models from code: no pickle
        "artifacts": {ARTIFACT: str(Path(model_dir).resolve())},
        "code_paths": [str(Path(aigi.__file__).parent)],
        "signature": signature(threshold, saved_classes(model_dir)),
        "input_example": pd.DataFrame({INPUT_COLUMN: [example_png()]}) if example else None,
        "pip_requirements": requirements(),
    }


def save_pyfunc(model_dir: Path, dest: Path, threshold: float) -> Path:
    """The pyfunc model of a saved detector folder, written to `dest` (not logged anywhere): what
    `aigi predict --spark` hands to `mlflow.pyfunc.spark_udf` for a model folder."""
    mlflow.pyfunc.save_model(path=str(dest), **pyfunc_arguments(model_dir, threshold, example=False))
    return dest


WEIGHTS_TAG = "weights_sha256"  # on each registered version: the model files it holds
THRESHOLD_TAG = "decision_threshold"  # ... and its default decision threshold


def weights_sha256(model_dir: Path) -> str:
    """One hash of every file in the saved model folder (names and bytes): the registry's key."""
    digest = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(f.relative_to(model_dir).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def log_and_register(model_dir: Path, params: Params) -> Any:
    """Log `model_dir` as a pyfunc model in the active run, register it under `mlflow.registered_model`
    and point `mlflow.model_alias` at the new version. Returns the `ModelVersion`.

    One version per model: when a version already holds these exact weights (its `weights_sha256`
    tag), it is returned as is, nothing is logged and the alias stays where it is (re-evaluating with
    other evaluate params makes no new version)."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    name, alias = params.mlflow.registered_model, params.mlflow.model_alias
    key = weights_sha256(model_dir)
    client = mlflow.MlflowClient()
    existing = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get(WEIGHTS_TAG) == key]
    if existing:
        return min(existing, key=lambda v: int(v.version))
    threshold = decision_threshold(saved_threshold(model_dir), params.evaluate.threshold)  # the signature's default
    info = mlflow.pyfunc.log_model(name=MODEL_NAME, registered_model_name=name,
                                   **pyfunc_arguments(model_dir, threshold))
    client.set_model_version_tag(name, info.registered_model_version, WEIGHTS_TAG, key)
    client.set_model_version_tag(name, info.registered_model_version, THRESHOLD_TAG, str(threshold))
    client.set_registered_model_alias(name, alias, info.registered_model_version)
    return client.get_model_version(name, info.registered_model_version)


def load_for_predict(uri: str) -> tuple[Any, dict[str, Any]]:
    """The detector inside an MLflow model (registry or run URI) and its `detector.json`."""
    try:
        model = mlflow.pyfunc.load_model(uri)
    except mlflow.exceptions.MlflowException as e:
        raise AigiError(f"cannot load the MLflow model {uri} ({one_line(e)}); check the name, "
                        f"alias or run id, and MLFLOW_TRACKING_URI") from None
    wrapped = model.unwrap_python_model()
    if not isinstance(wrapped, DetectorModel):
        raise AigiError(f"{uri} is not an aigi detector model")
    return wrapped.detector, wrapped.meta
