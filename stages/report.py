"""Stage report: reports/report.md and a self-contained reports/report.html; logged to the MLflow run."""

import json

import mlflow
import pandas as pd

from aigi import params, report, tracking
from aigi.data.store import atomic_dir, load_manifest, load_split
from aigi.errors import exits_cleanly
from aigi.paths import (
    ATTRIBUTION_FIGURE,
    EVAL_CURVES,
    EVAL_METRICS,
    EVAL_PREDICTIONS,
    RELIABILITY_FIGURE,
    REPORT_HTML,
    REPORTS,
    ROBUSTNESS_FIGURE,
    ROBUSTNESS_METRICS,
    RUN_JSON,
    SALIENCY_GRID,
    SALIENCY_METRICS,
    TEST_METRICS,
    TRAIN_CURVES,
    ZEROSHOT_CURVES,
    ZEROSHOT_METRICS,
    audit_metrics,
    processed_dir,
    source_json,
)


def _json(path):
    return json.loads(path.read_text())


@exits_cleanly
def main() -> None:
    p = params.load()
    processed = processed_dir(p.train_on)
    test_images, _ = load_split(processed, "test")
    run_id = tracking.read_run_id(RUN_JSON)
    with atomic_dir(REPORTS) as out:
        report.build(
            out, p,
            zeroshot=_json(ZEROSHOT_METRICS),
            finetuned=_json(EVAL_METRICS),
            robustness=_json(ROBUSTNESS_METRICS),
            source=_json(source_json(p.train_on)),
            manifest=load_manifest(processed),
            figures={"train": TRAIN_CURVES, "zeroshot": ZEROSHOT_CURVES, "eval": EVAL_CURVES,
                     "robustness": ROBUSTNESS_FIGURE, "attribution": ATTRIBUTION_FIGURE,
                     "reliability": RELIABILITY_FIGURE},
            mistakes=(pd.read_csv(EVAL_PREDICTIONS), test_images),
            saliency=(_json(SALIENCY_METRICS), SALIENCY_GRID),
            model={"run_id": run_id, "uri": f"models:/{p.mlflow.registered_model}@{p.mlflow.model_alias}"},
            # only the sets asked for: metrics/test/ may still hold a set since removed from evaluate.test_on
            test_sets={name: _json(TEST_METRICS / f"{name}.json") for name in [p.train_on, *p.evaluate.test_on]},
            audits={name: _json(audit_metrics(name)) for name in [p.train_on, *p.evaluate.test_on]},
        )
    with tracking.model_run(p, RUN_JSON):
        mlflow.log_artifacts(str(REPORTS), "report")
    print(f"report: {REPORT_HTML}")


if __name__ == "__main__":
    main()
