"""Batch scoring on Spark: the detector's MLflow pyfunc model as `mlflow.pyfunc.spark_udf` over the
`binaryFile` source, one output row per file (`aigi predict --spark MASTER -o OUT.parquet PATHS...`).

Needs the optional extra `aigi[spark]` (pyspark) and a Java runtime (17+). The UDF is a pandas UDF:
Spark hands it the files of a partition in Arrow batches (`spark.sql.execution.arrow.maxRecordsPerBatch`
rows), the model scores them in batches of 64, and each Python worker builds the detector once
(`aigi.serving.cached_detector`), however many partitions it runs. A file that is not a readable image
gets its reason in the `error` column of its row; the job goes on.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aigi.data.images import IMAGE_SUFFIXES
from aigi.errors import AigiError

RESULT = "prediction"
OPEN_COST = str(64 * 1024)  # bytes Spark counts per file when it packs files into partitions


def require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise AigiError('--spark needs pyspark: pip install "aigi[spark]" (and a Java 17+ runtime)') from None
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise AigiError("--spark needs a Java 17+ runtime: install one or set JAVA_HOME")


def session(master: str, app: str = "aigi-predict") -> Any:
    """A SparkSession on `master` (local[N], spark://host:port, yarn, k8s://...); executors run this
    Python (`PYSPARK_PYTHON`, unless already set), so `--env-manager local` finds the same libraries."""
    require_pyspark()
    import sys

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Image files are small: pack many into a partition (Spark's 4 MB cost per opened file would give one
    # task per few files, each paying the UDF's start-up; 20,000 CIFAKE files were 625 tasks).
    builder = (SparkSession.builder.master(master).appName(app).config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false").config("spark.sql.files.openCostInBytes", OPEN_COST))
    if master.startswith("local"):  # a local run stays on the loopback interface
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # py4j / JVM start-up: one line, not a Java stack
        raise AigiError(f"cannot start Spark on {master}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                        f"check the master URL and that Java 17+ is installed") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _is_uri(text: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", text) is not None


def image_files(spark: Any, inputs: Sequence[str]) -> Any:
    """A `binaryFile` DataFrame (path, modificationTime, length, content) of the image files in `inputs`:
    folders (searched recursively for image extensions), glob patterns, files, object-store URIs."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    frames = []
    pattern = "(?i)\\.(" + "|".join(e.lstrip(".") for e in sorted(IMAGE_SUFFIXES)) + ")$"
    for item in inputs:
        local = not _is_uri(item)
        if local and Path(item).is_dir():
            reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
            frame = reader.load(str(Path(item).resolve())).where(F.col("path").rlike(pattern))
        else:
            target = str(Path(item).resolve()) if local and Path(item).exists() else item
            try:
                frame = spark.read.format("binaryFile").load(target)
            except AnalysisException as e:
                raise AigiError(f"{item}: {str(e).splitlines()[0]}; give files, folders, globs or URIs") from None
        frames.append(frame)
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def udf(spark: Any, model_uri: str, threshold: float | None = None) -> Any:
    """The detector as a Spark UDF: image bytes in, a struct of the model's output columns out
    (`p_fake`, `label`, [`generator`, `p_<CLASS>`...], `error`). Without `threshold`, the model's saved
    one (its signature's default, `evaluate.threshold` when it was logged)."""
    import mlflow

    params = None if threshold is None else {"threshold": float(threshold)}
    return mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local", params=params)


def score(spark: Any, model_uri: str, inputs: Sequence[str], threshold: float | None = None,
          partitions: int | None = None) -> Any:
    """One row per image file: `path`, the model's output columns, `error`."""
    files = image_files(spark, inputs)
    if partitions:
        files = files.repartition(partitions)
    predict = udf(spark, model_uri, threshold)
    return files.select("path", predict("content").alias(RESULT)).select("path", f"{RESULT}.*")


def pyfunc_uri(model: str | None, tmp: Path, threshold: float | None) -> str:
    """An MLflow model URI for `--model`: itself when it is one; a saved model folder is made into a
    pyfunc model under `tmp` whose threshold is `threshold` (else 0.5)."""
    from aigi import serving
    from aigi.paths import MODEL_DIR, project_root

    if model and _is_uri(model):
        return model
    folder = Path(model) if model else project_root() / MODEL_DIR
    if not (folder / "detector.json").is_file():
        raise AigiError(f"{folder}: not a saved aigi model (no detector.json); give --model")
    return str(serving.save_pyfunc(folder, tmp / "pyfunc", 0.5 if threshold is None else threshold))


def check_local_inputs(inputs: Sequence[str]) -> None:
    """Local paths and globs that name nothing: one line before Spark starts (URIs are Spark's to list)."""
    import glob

    for item in inputs:
        if not _is_uri(item) and not Path(item).exists() and not glob.glob(item, recursive=True):
            raise AigiError(f"{item}: no such file, folder or glob match; give files, folders, globs or URIs")


def counts(spark: Any, output: str) -> tuple[int, int]:
    """(rows, rows with an error) of the Parquet written at `output`, in one pass."""
    from pyspark.sql import functions as F

    row = spark.read.parquet(output).agg(F.count("*").alias("n"),
                                         F.sum((F.col("error") != "").cast("int")).alias("failed")).first()
    return int(row["n"]), int(row["failed"] or 0)


def write_parquet(frame: Any, output: str) -> tuple[int, int]:
    """Write `frame` as a Parquet dataset at `output`; (rows, failed rows). A local path is written beside it
    and renamed into place, so a failed job (or no input image) leaves nothing under that name;
    object-store URIs rely on Spark's output committer."""
    spark = frame.sparkSession
    if _is_uri(output) and not output.startswith("file:"):
        frame.write.mode("errorifexists").parquet(output)
        return counts(spark, output)
    final = Path(output.removeprefix("file:")).resolve()
    if final.exists():
        raise AigiError(f"{output} exists; remove it or choose another -o")
    partial = final.with_name(f"{final.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        frame.write.parquet(str(partial))
        rows, failed = counts(spark, str(partial))
        if not rows:
            raise AigiError("no input images; give files, folders, glob patterns or URIs")
        partial.replace(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return rows, failed


def predict(master: str, model: str | None, inputs: Sequence[str], output: str, threshold: float | None = None,
            partitions: int | None = None) -> tuple[int, int]:
    """`aigi predict --spark`: scores `inputs` on `master` into Parquet at `output`; (rows, failed rows).
    `model`: an MLflow model URI (looked up in the current tracking store) or a saved model folder.
    `threshold`: None for an MLflow model's saved one; a folder's model is saved with it (else 0.5)."""
    import mlflow

    check_local_inputs(inputs)
    with tempfile.TemporaryDirectory(prefix="aigi-spark-") as tmp:
        uri = pyfunc_uri(model, Path(tmp), threshold)
        spark = session(master)
        try:
            try:
                frame = score(spark, uri, inputs, threshold, partitions)
            except mlflow.exceptions.MlflowException as e:
                raise AigiError(f"cannot load the MLflow model {model}: {str(e).splitlines()[0]}") from None
            return write_parquet(frame, output)
        finally:
            spark.stop()
