"""Stage finetune: train the detector (finetune.method), save it to models/finetuned/, open its MLflow run."""

import hashlib
import json

import mlflow
import torch

from aigi import device, params, tracking
from aigi.data.store import atomic_dir, load_split
from aigi.errors import exits_cleanly
from aigi.model import create_detector, save_detector
from aigi.paths import CHECKPOINT_DIR, MODEL_DIR, PLOTS, PROCESSED
from aigi.plots import write_training_curves
from aigi.train import train

CHECKPOINT = CHECKPOINT_DIR / "finetune.pt"


def fingerprint(p: params.Params) -> str:
    """What a checkpoint must match to be resumed: the params this stage reads and the data."""
    keys = {"seed": p.seed, "model": p.model.model_dump(), "prompts": p.zeroshot.prompts,
            "finetune": p.finetune.model_dump(), "data": (PROCESSED / "manifest.json").read_text()}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


@exits_cleanly
def main() -> None:
    p = params.load()
    dev = device.resolve(p.model.device)
    train_images, train_table = load_split(PROCESSED, "train")
    val_images, val_table = load_split(PROCESSED, "val")
    detector = create_detector(p.model.arch, p.model.pretrained, p.zeroshot.prompts, dev, seed=p.seed)

    fp = fingerprint(p)
    previous = torch.load(CHECKPOINT, weights_only=True) if CHECKPOINT.is_file() else {}
    run_id = previous.get("run_id") if previous.get("fingerprint") == fp else None

    with tracking.start_training_run(p, run_id) as run:
        def log_epoch(row: dict) -> None:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

        result = train(
            detector, (train_images, train_table["label"].to_numpy()), (val_images, val_table["label"].to_numpy()),
            p.finetune, p.zeroshot.prompts, p.seed, checkpoint=CHECKPOINT, fingerprint=fp,
            on_epoch=log_epoch, extra_state={"run_id": run.info.run_id},
        )
        with atomic_dir(MODEL_DIR) as out:
            save_detector(detector, out, {
                "arch": p.model.arch, "pretrained": p.model.pretrained, "method": p.finetune.method,
                "prompts": p.zeroshot.prompts, "best_epoch": result.best_epoch, "mlflow_run_id": run.info.run_id,
            })
            (out / tracking.RUN_ID_FILE).write_text(run.info.run_id + "\n")
        write_training_curves(PLOTS / "train", result.history)
        mlflow.log_metrics({"best_epoch": result.best_epoch, "stopped_early": float(result.stopped_early)})
        mlflow.log_artifacts(str(MODEL_DIR), "finetuned")
        mlflow.log_artifacts(str(PLOTS / "train"), "plots/train")
    CHECKPOINT.unlink(missing_ok=True)  # a finished stage leaves only its declared outs
    best = result.history[result.best_epoch - 1]
    print(f"finetune: best epoch {result.best_epoch}: val_accuracy={best['val_accuracy']:.4f}; run {run.info.run_id}")


if __name__ == "__main__":
    main()
