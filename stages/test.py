"""Stage test@<name>, one per dataset in `evaluate.test_on`: the fine-tuned and the zero-shot detector on that
dataset's test split (its classes matched to the detector's by name: REAL, seen generators, unseen ones).

Writes metrics/test/<name>.json (`{"finetuned": ..., "zeroshot": ...}`) and plots/test/<name>/{finetuned,zeroshot}/
(ROC, PR, confusion, predictions.csv); logs `test_<name>_*` and `zeroshot_<name>_*` into the model's MLflow run.
"""

import sys

import mlflow

from aigi import device, params, tracking
from aigi.data.store import atomic_dir
from aigi.errors import AigiError, exits_cleanly
from aigi.evaluation import mlflow_test_set_metrics, score_test_set, write_json
from aigi.model import create_detector, load_detector
from aigi.paths import MODEL_DIR, RUN_JSON, TEST_METRICS, processed_dir, test_set_plots


@exits_cleanly
def main() -> None:
    if len(sys.argv) != 2:
        raise AigiError("usage: python stages/test.py <dataset>, a name in evaluate.test_on (dvc repro test@<name>)")
    name = sys.argv[1]
    p = params.load()
    if name not in p.evaluate.test_on:
        raise AigiError(f"{name} is not in evaluate.test_on ({', '.join(p.evaluate.test_on) or 'empty'}); "
                        f"add it there and run dvc repro")
    dev = device.resolve(p.model.device)
    finetuned, meta = load_detector(MODEL_DIR, dev)
    # The zero-shot detector of the same classes: the prompts the model was trained against, as saved with it.
    zeroshot = create_detector(p.model.arch, p.model.pretrained, meta["prompts"], dev, seed=p.seed)
    data = processed_dir(name)
    with atomic_dir(test_set_plots(name)) as plots:
        results = {
            "finetuned": score_test_set(finetuned, p, f"{name} fine-tuned", p.evaluate.batch_size, data,
                                        plots / "finetuned"),
            "zeroshot": score_test_set(zeroshot, p, f"{name} zero-shot", p.zeroshot.batch_size, data,
                                       plots / "zeroshot"),
        }
    write_json(TEST_METRICS / f"{name}.json", results)
    with tracking.model_run(p, RUN_JSON):
        mlflow.log_metrics(mlflow_test_set_metrics(name, results))
        for model in results:  # the curves, not predictions.csv (a row per image: DVC keeps it)
            for f in sorted((test_set_plots(name) / model).glob("*")):
                if f.is_file() and f.name != "predictions.csv":
                    mlflow.log_artifact(str(f), f"plots/test/{name}/{model}")
        mlflow.log_artifact(str(TEST_METRICS / f"{name}.json"), "metrics/test")
    ft, zs = results["finetuned"], results["zeroshot"]
    unseen = ", ".join(ft.get("unseen", {})) or "none"
    print(f"test@{name}: roc_auc={ft['roc_auc']:.4f} tpr_at_fpr_1={ft['tpr_at_fpr_1']:.4f} "
          f"(zero-shot {zs['roc_auc']:.4f} / {zs['tpr_at_fpr_1']:.4f}) on {ft['n']:,} images; "
          f"unseen generators: {unseen}")


if __name__ == "__main__":
    main()
