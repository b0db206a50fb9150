"""Stage summary: metrics/summary.json, the headline numbers for `dvc exp show` and the MLflow runs table:
zero-shot vs fine-tuned on the training dataset's test split, and ROC-AUC and TPR at 1% FPR per set in
`evaluate.test_on`; logged to the model's MLflow run."""

import json

import mlflow

from aigi import params, tracking
from aigi.errors import AigiError, exits_cleanly
from aigi.metrics import summary
from aigi.paths import EVAL_METRICS, RUN_JSON, SUMMARY_METRICS, TEST_METRICS, ZEROSHOT_METRICS


def _json(path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AigiError(f"{path} is missing; run the stage that writes it (dvc repro)") from None


@exits_cleanly
def main() -> None:
    p = params.load()
    sets = {name: _json(TEST_METRICS / f"{name}.json") for name in p.evaluate.test_on}
    headline = summary(_json(ZEROSHOT_METRICS), _json(EVAL_METRICS), sets)
    SUMMARY_METRICS.write_text(json.dumps(headline, indent=2) + "\n")
    with tracking.model_run(p, RUN_JSON):
        mlflow.log_metrics(headline)
        mlflow.log_artifact(str(SUMMARY_METRICS), "metrics")
    print("summary: " + " ".join(f"{k}={v:g}" for k, v in headline.items()))


if __name__ == "__main__":
    main()
