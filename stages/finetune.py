"""Stage finetune: train the detector (finetune.method), save it to models/finetuned/, open its MLflow run.

Resumes from models/checkpoints/finetune.pt (and into the same MLflow run) after an interruption.
Multi-GPU: `torchrun --nproc_per_node=N stages/finetune.py`, or across nodes `torchrun --nnodes=M
--rdzv-backend=c10d ...`; rank 0 alone logs, checkpoints and saves, and its checkpoint reaches the other ranks.
"""

import contextlib
import hashlib
import json
from pathlib import Path

import mlflow

from aigi import calibration, device, distributed, params, tracking
from aigi.classes import from_manifest
from aigi.data.store import atomic_dir, load_manifest, load_split
from aigi.errors import exits_cleanly
from aigi.model import save_detector, zeroshot_detector
from aigi.paths import CHECKPOINT_DIR, MODEL_DIR, RUN_JSON, TRAIN_PLOTS, processed_dir
from aigi.plots import write_reliability_plots, write_training_curves
from aigi.train import Checkpoints, code_fingerprint, load_checkpoint, train

CHECKPOINT = CHECKPOINT_DIR / "finetune.pt"


def fingerprint(p: params.Params, world_size: int) -> str:
    """What a checkpoint must match to be resumed: the params this stage reads, the data, the code and
    library versions, the process count."""
    keys = {"code": code_fingerprint(Path(__file__)), "seed": p.seed, "model": p.model.model_dump(),
            "prompts": p.zeroshot.model_dump(exclude={"batch_size"}), "finetune": p.finetune.model_dump(),
            "data": load_manifest(processed_dir(p.train_on)), "world_size": world_size}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


@exits_cleanly
def main() -> None:
    p = params.load()
    world, dev = distributed.init(device.resolve(p.model.device))
    try:
        run(p, world, dev)
    finally:
        distributed.shutdown()


def run(p: params.Params, world: distributed.World, dev) -> None:
    processed = processed_dir(p.train_on)
    train_images, train_table = load_split(processed, "train")
    val_images, val_table = load_split(processed, "val")
    manifest = load_manifest(processed)
    detector, prompts = zeroshot_detector(manifest, p.model, p.zeroshot, dev, p.seed)  # prompts: REAL first

    fp = fingerprint(p, world.size)
    distributed.check_same(fp, "params, data or code")
    resume = load_checkpoint(CHECKPOINT, fp) if world.is_main else None  # rank 0's path; the others get it below
    run_id = resume.get("run_id") if resume else None  # a resumed run logs into the same MLflow run
    if run_id and not tracking.run_usable(p.mlflow, run_id):
        print(f"ignoring {CHECKPOINT}: its MLflow run {run_id} is deleted or missing in "
              f"{tracking.tracking_uri(p.mlflow)}; "
              f"training starts afresh")
        resume, run_id = None, None
    resume = distributed.broadcast(resume)

    with tracking.start_training_run(p, run_id) if world.is_main else contextlib.nullcontext() as mlrun:
        def log_epoch(row: dict) -> None:
            mlflow.log_metrics(tracking.epoch_metrics(row), step=int(row["epoch"]))

        checkpoints = Checkpoints(CHECKPOINT, fp, resume, extra={"run_id": mlrun.info.run_id if mlrun else None})
        result = train(
            detector, (train_images, train_table["label"].to_numpy()), (val_images, val_table["label"].to_numpy()),
            p.finetune, prompts, p.seed, checkpoints=checkpoints, on_epoch=log_epoch, world=world,
        )
        if not world.is_main:
            return
        # Operating point on validation: temperature scaling (saved in detector.json, applied at load), the
        # target-FPR threshold; ECE and the reliability bins at the decision threshold.
        cal = calibration.calibrate(detector, val_images, val_table["label"].to_numpy(), p.finetune.calibration,
                                    p.evaluate.target_fpr, p.finetune.eval_batch_size,
                                    threshold=p.evaluate.threshold)
        if cal["threshold_note"]:
            print(f"warning: {cal['threshold_note']}")
        with atomic_dir(MODEL_DIR) as out:
            save_detector(detector, out, {
                "arch": p.model.arch, "pretrained": p.model.pretrained, "method": p.finetune.method,
                "display_names": from_manifest(manifest)[1], "prompts": prompts, "best_epoch": result.best_epoch,
                "wise_alpha": p.finetune.wise_alpha,
                "resize": manifest["resize"], "jpeg_align": manifest["jpeg_align"],
                **{k: cal[k] for k in ("temperature", "threshold", "target_fpr", "calibration")},
            })
        tracking.write_run_file(RUN_JSON, mlrun.info.run_id)  # beside the model: same weights, same DVC hash
        write_training_curves(TRAIN_PLOTS, result.history)
        write_reliability_plots(TRAIN_PLOTS, cal["reliability"], "validation, before/after temperature")
        mlflow.log_metrics({"best_epoch": result.best_epoch, "stopped_early": float(result.stopped_early),
                            **{f"final_{k}": v for k, v in result.final_val.items()},
                            **calibration.mlflow_metrics(cal)})
        mlflow.log_artifacts(str(MODEL_DIR), "finetuned")
        mlflow.log_artifacts(str(TRAIN_PLOTS), "plots/train")
    CHECKPOINT.unlink(missing_ok=True)  # a finished stage leaves only its declared outs
    CHECKPOINT.with_name(CHECKPOINT.name + ".tmp").unlink(missing_ok=True)
    if CHECKPOINT_DIR.is_dir() and not any(CHECKPOINT_DIR.iterdir()):
        CHECKPOINT_DIR.rmdir()
    final = result.final_val
    print(f"finetune: best epoch {result.best_epoch}; saved model val_accuracy={final['val_accuracy']:.4f} "
          f"(wise_alpha={p.finetune.wise_alpha}); run {mlrun.info.run_id}")


if __name__ == "__main__":
    main()
