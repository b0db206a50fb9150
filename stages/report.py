"""Stage report: reports/report.md and a self-contained reports/report.html; logged to the MLflow run."""

import json

import mlflow
import pandas as pd

from aigi import params, report, tracking
from aigi.data.store import atomic_dir, load_split
from aigi.errors import exits_cleanly
from aigi.paths import METRICS, PLOTS, PROCESSED, REPORTS, RUN_JSON, SOURCE_JSON, TEST_METRICS


def _json(path):
    return json.loads(path.read_text())


@exits_cleanly
def main() -> None:
    p = params.load()
    test_images, _ = load_split(PROCESSED, "test")
    run_id = tracking.read_run_id(RUN_JSON)
    with atomic_dir(REPORTS) as out:
        report.build(
            out, p,
            zeroshot=_json(METRICS / "zeroshot.json"),
            finetuned=_json(METRICS / "eval.json"),
            robustness=_json(METRICS / "robustness.json"),
            source=_json(SOURCE_JSON),
            manifest=_json(PROCESSED / "manifest.json"),
            figures={
                "Training curves": PLOTS / "train" / "curves.png",
                "Zero-shot: ROC, precision-recall, confusion": PLOTS / "zeroshot" / "curves.png",
                "Fine-tuned: ROC, precision-recall, confusion": PLOTS / "eval" / "curves.png",
                "Robustness": PLOTS / "robustness" / "robustness.png",
                "Attribution": PLOTS / "eval" / "attribution_confusion.png",
            },
            mistakes=(pd.read_csv(PLOTS / "eval" / "predictions.csv"), test_images),
            saliency=(_json(METRICS / "saliency.json"), PLOTS / "explain" / "grid.png"),
            model={"run_id": run_id, "uri": f"models:/{p.mlflow.registered_model}@{p.mlflow.model_alias}"},
            # only the sets asked for: metrics/test/ may still hold a set since removed from evaluate.test_on
            test_sets={name: _json(TEST_METRICS / f"{name}.json") for name in [p.train_on, *p.evaluate.test_on]},
        )
    with tracking.model_run(p, RUN_JSON):
        mlflow.log_artifacts(str(REPORTS), "report")
    print(f"report: {REPORTS / 'report.html'}")


if __name__ == "__main__":
    main()
