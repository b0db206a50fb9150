"""Stage report: reports/report.md and a self-contained reports/report.html; logged to the MLflow run."""

import json

import mlflow
import pandas as pd

from aigi import params, report, tracking
from aigi.data.store import atomic_dir, load_split
from aigi.errors import exits_cleanly
from aigi.paths import METRICS, MODEL_DIR, PLOTS, PROCESSED, REPORTS, SOURCE_JSON


@exits_cleanly
def main() -> None:
    p = params.load()
    test_images, _ = load_split(PROCESSED, "test")
    with atomic_dir(REPORTS) as out:
        report.build(
            out, p,
            zeroshot=json.loads((METRICS / "zeroshot.json").read_text()),
            finetuned=json.loads((METRICS / "eval.json").read_text()),
            source=json.loads(SOURCE_JSON.read_text()),
            manifest=json.loads((PROCESSED / "manifest.json").read_text()),
            figures={
                "Training curves": PLOTS / "train" / "curves.png",
                "Zero-shot: ROC, precision-recall, confusion": PLOTS / "zeroshot" / "curves.png",
                "Fine-tuned: ROC, precision-recall, confusion": PLOTS / "eval" / "curves.png",
            },
            mistakes=(pd.read_csv(PLOTS / "eval" / "predictions.csv"), test_images),
        )
    with tracking.model_run(p, MODEL_DIR):
        mlflow.log_artifacts(str(REPORTS), "report")
    print(f"report: {REPORTS / 'report.html'}")


if __name__ == "__main__":
    main()
