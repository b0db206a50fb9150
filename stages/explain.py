"""Stage explain: Grad-CAM of the fine-tuned and zero-shot detectors on the test split: the grid PNG for
the report (plots/explain/) and the border share of saliency per class (metrics/saliency.json)."""

import json

import mlflow
import pandas as pd

from aigi import device, params, saliency, tracking
from aigi.data.store import atomic_dir, load_manifest, load_split
from aigi.errors import exits_cleanly
from aigi.model import load_detector, zeroshot_detector
from aigi.paths import (
    EVAL_PREDICTIONS,
    EXPLAIN_PLOTS,
    MODEL_DIR,
    RUN_JSON,
    SALIENCY_GRID,
    SALIENCY_METRICS,
    ZEROSHOT_PREDICTIONS,
    processed_dir,
)


@exits_cleanly
def main() -> None:
    p = params.load()
    dev = device.resolve(p.model.device)
    processed = processed_dir(p.train_on)
    images, table = load_split(processed, "test")
    models = {
        "fine-tuned": (load_detector(MODEL_DIR, dev)[0], pd.read_csv(EVAL_PREDICTIONS)),
        "zero-shot": (zeroshot_detector(load_manifest(processed), p.model, p.zeroshot, dev, p.seed)[0],
                      pd.read_csv(ZEROSHOT_PREDICTIONS)),
    }
    with atomic_dir(EXPLAIN_PLOTS) as out:
        saliency.grid_figure(models, images, p.evaluate.threshold, p.explain.examples, p.explain.batch_size,
                             out / SALIENCY_GRID.name)
        result = saliency.summarise(models, images, table, p.explain, p.seed, p.evaluate.threshold)
    SALIENCY_METRICS.write_text(json.dumps(result, indent=2) + "\n")
    with tracking.model_run(p, RUN_JSON):
        mlflow.log_artifacts(str(EXPLAIN_PLOTS), "plots/explain")
        mlflow.log_artifact(str(SALIENCY_METRICS), "metrics")
        mlflow.log_metrics(saliency.mlflow_metrics(result))
    share = result["border_share"]
    print(f"explain: saliency border share {share['finetuned']['all']:.3f} fine-tuned, "
          f"{share['zeroshot']['all']:.3f} zero-shot (uniform {result['uniform_border_share']:.3f})")


if __name__ == "__main__":
    main()
