"""The `aigi` command: `aigi demo`, `aigi compare`, `aigi ui`, `aigi predict PATH...` (`--spark MASTER`)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import re
import sys
from pathlib import Path

from aigi.errors import exits_cleanly
from aigi.params import MAX_IMAGE_PIXELS
from aigi.paths import MODEL_DIR, project_root


def _demo(args: argparse.Namespace) -> int:
    from aigi import demo

    root = project_root()
    overrides = demo.generator_overrides(root, args.generators, args.unseen) if args.generators else {}
    if args.params:
        overrides = demo.merge(overrides, demo.file_overrides(root, Path(args.params)))
    return demo.run(root, (root / args.dir).resolve(), overrides)


def _compare(args: argparse.Namespace) -> int:
    from aigi import compare

    root = project_root()
    if args.train_on:
        names = [n.strip() for n in args.train_on.split(",") if n.strip()]
        return compare.main_matrix(root, None if args.here else (root / args.dir).resolve(), names)
    return compare.main(root, (root / args.dir).resolve())


def _ui(args: argparse.Namespace) -> int:
    """`mlflow ui` on the project's store, after printing where each aigi experiment's runs table is."""
    import subprocess

    from aigi import tracking
    from aigi.params import Params

    uri = tracking.use_store((_project_params() or Params()).mlflow)
    base = f"http://127.0.0.1:{args.port}"
    import mlflow

    with contextlib.suppress(mlflow.exceptions.MlflowException):  # a store not created yet has none
        for exp in mlflow.search_experiments():
            if exp.tags.get(tracking.EXPERIMENT_KIND_TAG) == tracking.MODEL_TRAINING:
                print(f"ui: {exp.name}: {tracking.runs_page(base, exp.experiment_id)}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port)]
    artifacts = tracking.artifact_location(uri)
    return subprocess.run(cmd + (["--default-artifact-root", artifacts] if artifacts else [])).returncode


def _project_params():
    """The project's params.yaml, when the command runs inside the project (for defaults), else None."""
    from aigi import params

    path = project_root() / "params.yaml"
    return params.load(path) if path.is_file() else None


def load_model(model: str | None, device_name: str):
    """A local model folder (default: the pipeline's models/finetuned) or an MLflow model URI."""
    from aigi import device
    from aigi.model import load_detector

    dev = device.resolve(device_name)
    if model and _is_uri(model):
        from aigi import serving, tracking
        from aigi.params import Params

        tracking.use_store((_project_params() or Params()).mlflow)
        detector, _ = serving.load_for_predict(model)
        return detector.to(dev).eval()
    detector, _ = load_detector(Path(model) if model else project_root() / MODEL_DIR, dev)
    return detector


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _is_uri(text: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", text) is not None  # models:/, runs:/, s3://; not C:/


def _predict_on_spark(args: argparse.Namespace) -> int:
    from aigi import spark
    from aigi.errors import AigiError

    if not args.output:
        raise AigiError("--spark writes Parquet: give -o OUT.parquet")
    if args.explain:
        raise AigiError("--explain runs without --spark only")
    threshold, project = args.threshold, _project_params()
    if args.model and _is_uri(args.model):
        from aigi import tracking
        from aigi.params import Params

        tracking.use_store((project or Params()).mlflow)  # models:/, runs:/ in the project's store; own threshold
    elif threshold is None:  # a model folder: its own threshold (finetune, evaluate.target_fpr), else the project's
        from aigi.calibration import decision_threshold
        from aigi.paths import MODEL_DIR, project_root
        from aigi.serving import saved_threshold

        folder = Path(args.model) if args.model else project_root() / MODEL_DIR
        fallback = project.evaluate.threshold if project else 0.5
        threshold = decision_threshold(saved_threshold(folder), fallback) if (folder / "detector.json").is_file() \
            else fallback
    rows, failed = spark.predict(args.spark, args.model, args.paths, args.output, threshold, args.partitions)
    print(f"predict: {rows} files scored on {args.spark} into {args.output}"
          + (f"; {failed} could not be read (see their `error` column)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _predict(args: argparse.Namespace) -> int:
    from aigi.predict import expand, output_columns, predict_paths
    from aigi.progress import progress

    if args.spark:
        return _predict_on_spark(args)

    files = expand(args.paths)
    detector = load_model(args.model, args.device)
    threshold = args.threshold
    if threshold is None:  # the model's own (finetune, evaluate.target_fpr), else the project's evaluate.threshold
        project = _project_params()
        threshold = detector.threshold if detector.threshold is not None else (
            project.evaluate.threshold if project else 0.5)
    explain = Path(args.explain) if args.explain else None
    rows = progress(predict_paths(detector, files, args.batch_size, threshold, args.max_pixels, explain),
                    total=len(files), desc="predict", unit="img", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.output, "w", newline="")) if args.output else sys.stdout
        failed = write_rows(rows, out, args.format, output_columns(detector.classes), explain is not None)
    if failed:
        print(f"error: {failed} of {len(files)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def write_rows(rows, out, fmt: str, columns: list[str], explain: bool = False) -> int:
    """Write prediction rows (`columns` between path and error) as CSV or JSON lines; unreadable files also
    go to stderr. Returns their count."""
    columns = ["path", *columns, *(["explain"] if explain else []), "error"]
    writer = csv.DictWriter(out, columns) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    failed = 0
    for row in rows:
        if "error" in row:
            failed += 1
            print(f"error: {row['path']}: {row['error']}", file=sys.stderr)
        if writer:
            writer.writerow(row)
        else:
            out.write(json.dumps(row) + "\n")
    return failed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigi", description="Detect AI-generated images with CLIP.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the whole pipeline offline on synthetic data in a copy of the project")
    d.add_argument("--dir", default="demo", help="where the copy goes (default: demo/)")
    d.add_argument("--generators", type=_names, help="several synthetic generators, e.g. GAN,DIFFUSION,VAE: "
                   "the demo then shows attribution (which generator made an image)")
    d.add_argument("--unseen", type=_names, default=[], help="generators held out of training, tested apart "
                   "(evaluate.unseen_generators)")
    d.add_argument("--params", help="a YAML file of params merged last, e.g. params.multigen-sample.yaml")
    d.set_defaults(func=_demo)
    c = sub.add_parser("compare", help="the demo, then linear_probe, full and contrastive as queued DVC "
                       "experiments, side by side with zero-shot")
    c.add_argument("--dir", default="demo", help="the demo copy to run them in (default: demo/)")
    c.add_argument("--train-on", metavar="A,B,...", help="instead: one model per training dataset (`dvc exp run "
                   "--queue -S train_on=A`), each tested on the others and evaluate.test_on; prints the train x "
                   "test matrix (ROC-AUC / TPR@1%%FPR)")
    c.add_argument("--here", action="store_true", help="with --train-on: in this project, with its params.yaml "
                   "(nothing committed), not in the demo copy")
    c.set_defaults(func=_compare)
    u = sub.add_parser("ui", help="the MLflow UI on the project's store; prints each experiment's runs table URL")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=_ui)
    p = sub.add_parser("predict", help="P(fake) for image files, folders or globs")
    p.add_argument("paths", nargs="+")
    p.add_argument("--model", help="a saved model folder, or an MLflow model URI such as models:/NAME@ALIAS or "
                   "runs:/RUN_ID/model (default: the pipeline's models/finetuned)")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--output", "-o", help="write here instead of standard output")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threshold", type=float, help="P(fake) at or above this is FAKE (default: the threshold saved "
                   "with the model for evaluate.target_fpr, else evaluate.threshold of the project's params.yaml, "
                   "else 0.5; with --spark, likewise)")
    p.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS,
                   help="refuse larger images (decompression bombs)")
    p.add_argument("--explain", metavar="DIR", help="also write a Grad-CAM PNG per readable image into DIR "
                   "(image beside its heatmap overlay); the row gains its path in the `explain` column")
    p.add_argument("--device", default="auto")
    p.add_argument("--spark", metavar="MASTER", help="score on Spark instead (local[*], spark://HOST:7077, yarn, "
                   "k8s://...): PATHS may also be object-store URIs; writes Parquet to -o, one row per file; "
                   'needs pip install "aigi[spark]" and Java 17+; --batch-size, --device and --max-pixels do not '
                   "apply (the executors batch per partition and keep the default image-size guard)")
    p.add_argument("--partitions", type=int, help="with --spark: repartition the files into this many tasks")
    p.set_defaults(func=_predict)
    return parser


@exits_cleanly
def main() -> None:
    args = build_parser().parse_args()
    try:
        code = args.func(args)
    except BrokenPipeError:
        code = 0
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
