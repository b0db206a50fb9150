"""Stage explain: Grad-CAM of the fine-tuned and zero-shot detectors on the test split: the grid PNG for
the report (plots/explain/) and the border share of saliency per class (metrics/saliency.json)."""

import json

import mlflow
import pandas as pd

from aigi import device, params, saliency, tracking
from aigi.classes import manifest_prompts
from aigi.data.store import atomic_dir, load_split
from aigi.errors import exits_cleanly
from aigi.model import create_detector, load_detector
from aigi.paths import METRICS, MODEL_DIR, PLOTS, PROCESSED, RUN_JSON


@exits_cleanly
def main() -> None:
    p = params.load()
    dev = device.resolve(p.model.device)
    images, table = load_split(PROCESSED, "test")
    prompts = manifest_prompts(json.loads((PROCESSED / "manifest.json").read_text()), p.zeroshot)  # as zeroshot
    models = {
        "fine-tuned": (load_detector(MODEL_DIR, dev)[0], pd.read_csv(PLOTS / "eval" / "predictions.csv")),
        "zero-shot": (create_detector(p.model.arch, p.model.pretrained, prompts, dev, seed=p.seed),
                      pd.read_csv(PLOTS / "zeroshot" / "predictions.csv")),
    }
    with atomic_dir(PLOTS / "explain") as out:
        saliency.grid_figure(models, images, p.evaluate.threshold, p.explain.examples, p.explain.batch_size,
                             out / "grid.png")
        result = saliency.summarise(models, images, table, p.explain, p.seed, p.evaluate.threshold)
    (METRICS / "saliency.json").write_text(json.dumps(result, indent=2) + "\n")
    with tracking.model_run(p, RUN_JSON):
        mlflow.log_artifacts(str(PLOTS / "explain"), "plots/explain")
        mlflow.log_artifact(str(METRICS / "saliency.json"), "metrics")
        mlflow.log_metrics(saliency.mlflow_metrics(result))
    share = result["border_share"]
    print(f"explain: saliency border share {share['finetuned']['all']:.3f} fine-tuned, "
          f"{share['zeroshot']['all']:.3f} zero-shot (uniform {result['uniform_border_share']:.3f})")


if __name__ == "__main__":
    main()
