"""Stage evaluate: the fine-tuned detector on the test split; logs test_* and zeroshot_* to its MLflow run."""

import json

import mlflow

from aigi import device, params, tracking
from aigi.errors import exits_cleanly
from aigi.evaluation import mlflow_metrics, score_test_split
from aigi.model import load_detector
from aigi.paths import METRICS, MODEL_DIR, PLOTS


@exits_cleanly
def main() -> None:
    p = params.load()
    detector, _ = load_detector(MODEL_DIR, device.resolve(p.model.device))
    result = score_test_split(detector, p, "eval", p.evaluate.batch_size)
    zeroshot = json.loads((METRICS / "zeroshot.json").read_text())
    with tracking.model_run(p, MODEL_DIR):
        mlflow.log_metrics({**mlflow_metrics(result, "test_"), **mlflow_metrics(zeroshot, "zeroshot_")})
        for name in ("eval", "zeroshot"):
            mlflow.log_artifacts(str(PLOTS / name), f"plots/{name}")
        mlflow.log_artifact(str(METRICS / "eval.json"), "metrics")
        mlflow.log_artifact(str(METRICS / "zeroshot.json"), "metrics")
    print(f"evaluate: accuracy={result['accuracy']:.4f} (zero-shot {zeroshot['accuracy']:.4f}), "
          f"roc_auc={result['roc_auc']:.4f}")


if __name__ == "__main__":
    main()
