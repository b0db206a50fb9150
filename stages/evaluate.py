"""Stage evaluate: the fine-tuned detector on the training dataset's test split, clean and perturbed; logs the
metrics to the model's MLflow run and registers the model (pyfunc) under `mlflow.registered_model` with
`mlflow.model_alias`. The headline numbers (metrics/summary.json) are the summary stage's."""

import json
from pathlib import Path

import mlflow
import pandas as pd

from aigi import device, params, serving, tracking
from aigi.calibration import reliability_bins
from aigi.classes import is_fake
from aigi.errors import exits_cleanly
from aigi.evaluation import (
    mlflow_metrics,
    mlflow_robustness_metrics,
    score_robustness,
    score_test_split,
    write_json,
)
from aigi.model import load_detector
from aigi.paths import (
    EVAL_METRICS,
    EVAL_PLOTS,
    EVAL_PREDICTIONS,
    MODEL_DIR,
    ROBUSTNESS_METRICS,
    ROBUSTNESS_PLOTS,
    RUN_JSON,
    TEST_METRICS,
    ZEROSHOT_METRICS,
    ZEROSHOT_PLOTS,
    ZEROSHOT_PREDICTIONS,
    processed_dir,
    raw_images,
)
from aigi.plots import write_reliability_plots


def reliability(predictions: Path, threshold: float) -> dict[str, list]:
    """Reliability-diagram bins of a model's test predictions (the trained classes; held-out generators apart)."""
    table = pd.read_csv(predictions)
    table = table[table["label"] >= 0]
    return reliability_bins(is_fake(table["label_name"]), table["p_fake"].to_numpy(), threshold)


@exits_cleanly
def main() -> None:
    p = params.load()
    detector, meta = load_detector(MODEL_DIR, device.resolve(p.model.device))
    processed = processed_dir(p.train_on)
    result = score_test_split(detector, p, "eval", p.evaluate.batch_size, processed, EVAL_METRICS, EVAL_PLOTS)
    robust = score_robustness(detector, p, result, processed, raw_images(p.train_on), ROBUSTNESS_METRICS,
                              ROBUSTNESS_PLOTS)
    # How the decision threshold was chosen, and the model's calibration (both from finetune, in detector.json).
    result["operating_point"] = {k: meta.get(k) for k in ("target_fpr", "temperature", "calibration")}
    write_json(EVAL_METRICS, result)
    zeroshot = json.loads(ZEROSHOT_METRICS.read_text())
    write_reliability_plots(EVAL_PLOTS, {"zeroshot": reliability(ZEROSHOT_PREDICTIONS, zeroshot["threshold"]),
                                         "finetuned": reliability(EVAL_PREDICTIONS, result["threshold"])},
                            "test split")
    # The training dataset's own test, beside the other test sets (stage test@<name>) in the report and the
    # train x test matrix; it also keeps metrics/test/, a dependency of summary and report, from being empty.
    write_json(TEST_METRICS / f"{p.train_on}.json", {"finetuned": result, "zeroshot": zeroshot})
    with tracking.model_run(p, RUN_JSON):
        mlflow.log_metrics({**mlflow_metrics(result, "test_"), **mlflow_metrics(zeroshot, "zeroshot_"),
                            **mlflow_robustness_metrics(robust)})
        for folder in (EVAL_PLOTS, ZEROSHOT_PLOTS, ROBUSTNESS_PLOTS):
            mlflow.log_artifacts(str(folder), f"plots/{folder.name}")
        for file in (EVAL_METRICS, ZEROSHOT_METRICS, ROBUSTNESS_METRICS):
            mlflow.log_artifact(str(file), "metrics")
        version = serving.log_and_register(MODEL_DIR, p)
    worst = min(robust.items(), key=lambda kv: kv[1]["accuracy"], default=None)
    print(f"evaluate: accuracy={result['accuracy']:.4f} (zero-shot {zeroshot['accuracy']:.4f}), "
          f"roc_auc={result['roc_auc']:.4f}" + (f"; hardest perturbation {worst[0]}: "
                                                f"accuracy={worst[1]['accuracy']:.4f}" if worst else ""))
    if att := result.get("attribution"):
        print(f"evaluate: attribution accuracy={att['accuracy']:.4f} macro_f1={att['macro_f1']:.4f} "
              f"(zero-shot {zeroshot['attribution']['accuracy']:.4f})")
    print(f"evaluate: these weights are models:/{version.name}/{version.version} "
          f"(a new version only for new weights; alias {p.mlflow.model_alias})")


if __name__ == "__main__":
    main()
