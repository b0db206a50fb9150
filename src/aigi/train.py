"""Fine-tune a CLIP detector. Read top to bottom: setup, then one loop over epochs.

Methods (`finetune.method`):
- contrastive: both towers trained with CLIP's own objective, restricted to the class prompts.
  With two classes, in-batch image-text pairs of the same class would be false negatives, so each
  image is scored against the two class-prompt embeddings (recomputed every step, with gradients
  through the text tower) and trained with cross-entropy over classes, as in FLYP (Goyal et al., 2023).
- linear_probe: frozen CLIP, only the 2-way head trains (initialised from the zero-shot text weights).
- full: image tower + head, cross-entropy; the text tower is not used.

Every epoch ends with a validation pass, a checkpoint written atomically (resume after a crash) and
a callback (the stage logs to MLflow). Early stopping restores the best epoch's weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aigi.device import autocast
from aigi.model import Detector
from aigi.params import FinetuneParams
from aigi.progress import progress


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def trainable_parameters(detector: Detector, method: str) -> list[torch.nn.Parameter]:
    """Freeze what the method does not train; return what it does."""
    detector.requires_grad_(False)
    parts = {
        "contrastive": [detector.clip],
        "linear_probe": [detector.head],
        "full": [detector.clip.visual, detector.head],
    }[method]
    for part in parts:
        part.requires_grad_(True)
    return [p for p in detector.parameters() if p.requires_grad]


def param_groups(detector: Detector, params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases, embeddings' scalars and the logit scale."""
    names = {id(p): n for n, p in detector.named_parameters()}
    decay, no_decay = [], []
    for p in params:
        name = names[id(p)]
        if p.ndim < 2 or "logit_scale" in name or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def class_logits(detector: Detector, method: str, prompts: dict[str, list[str]]) -> Callable:
    """logits(pixels) for training: contrastive scores against live text embeddings, else the head."""
    if method == "contrastive":
        def logits(pixels: torch.Tensor) -> torch.Tensor:
            text = detector.class_embeddings(prompts)
            return detector.logit_scale() * detector.features(pixels).float() @ text.T
        return logits
    return detector


def batches(images, labels: np.ndarray, batch_size: int, order: np.ndarray, device: torch.device):
    """Slices of the uint8 array (memory-mapped or resident on the device) moved once per batch."""
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])  # sorted: sequential reads from the memmap
        if isinstance(images, torch.Tensor):
            x = images[torch.from_numpy(idx).to(images.device)]
        else:
            x = torch.from_numpy(images[idx])
            if device.type == "cuda":
                x = x.pin_memory()
        yield x.to(device, non_blocking=True), torch.from_numpy(labels[idx]).to(device, non_blocking=True)


def maybe_resident(images: np.ndarray, device: torch.device) -> np.ndarray | torch.Tensor:
    """Put a whole split on the GPU when it takes under half the free memory; else keep the memmap."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes < free * 0.5:
            return torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return images


@torch.no_grad()
def evaluate_loss_accuracy(logits_fn, images, labels, batch_size, device) -> tuple[float, float]:
    total_loss, correct = 0.0, 0
    for x, y in batches(images, labels, batch_size, np.arange(len(labels)), device):
        with autocast(device):
            logits = logits_fn(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(labels), correct / len(labels)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(
    detector: Detector,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    cfg: FinetuneParams,
    prompts: dict[str, list[str]],
    seed: int,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    extra_state: dict[str, Any] | None = None,
) -> TrainResult:
    """Train in place; returns the per-epoch history. Resumes from `checkpoint` if it matches `fingerprint`."""
    device = detector.mean.device
    seed_everything(seed)
    train_images, train_labels = train_data
    val_images, val_labels = val_data
    train_images = maybe_resident(train_images, device)
    val_images = maybe_resident(val_images, device)

    params = trainable_parameters(detector, cfg.method)
    optimizer = torch.optim.AdamW(param_groups(detector, params, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_labels) / (cfg.batch_size * cfg.grad_accum_steps))
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, round(total_steps * cfg.warmup_fraction))
    )
    logits_fn = class_logits(detector, cfg.method, prompts)

    result = TrainResult()
    best_val, best_state, start_epoch = -1.0, None, 1
    if checkpoint and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            detector.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            result.history, start_epoch = state["history"], state["epoch"] + 1
            best_val, result.best_epoch = state["best_val"], state["best_epoch"]
            best_state = state["best_model"]
            torch.set_rng_state(state["torch_rng"])
            print(f"resuming from {checkpoint} after epoch {state['epoch']}")
        else:
            print(f"ignoring {checkpoint}: it was written for other params or data")

    for epoch in range(start_epoch, cfg.epochs + 1):
        detector.train()
        order = np.random.default_rng([seed, epoch]).permutation(len(train_labels))
        flip_gen = torch.Generator(device=device).manual_seed(seed * 1000 + epoch)
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        bar = progress(total=len(order), desc=f"epoch {epoch}/{cfg.epochs}", unit="img", leave=False)
        for micro, (x, y) in enumerate(batches(train_images, train_labels, cfg.batch_size, order, device), start=1):
            if cfg.augment_flip:  # horizontal flip of a random half, on the device
                flip = torch.rand(len(x), generator=flip_gen, device=device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(2), x)
            with autocast(device):
                logits = logits_fn(x).float()
            loss = F.cross_entropy(logits, y)
            (loss / cfg.grad_accum_steps).backward()
            if micro % cfg.grad_accum_steps == 0 or seen + len(y) == len(order):
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.update(len(y))
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()

        detector.eval()
        val_loss, val_acc = evaluate_loss_accuracy(logits_fn, val_images, val_labels, cfg.eval_batch_size, device)
        row = {
            "epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "val_loss": val_loss, "val_accuracy": val_acc, "lr": scheduler.get_last_lr()[0],
            "images_per_second": seen / (time.perf_counter() - t0),
        }
        result.history.append(row)
        print(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if val_acc > best_val:
            best_val, result.best_epoch = val_acc, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in detector.state_dict().items()})
        if on_epoch:
            on_epoch(row)
        if checkpoint:
            save_checkpoint(checkpoint, {
                "fingerprint": fingerprint, "epoch": epoch, "history": result.history,
                "model": detector.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "best_val": best_val, "best_epoch": result.best_epoch,
                "best_model": best_state, "torch_rng": torch.get_rng_state(), **(extra_state or {}),
            })
        if cfg.early_stopping_patience and epoch - result.best_epoch >= cfg.early_stopping_patience:
            result.stopped_early = True
            print(f"early stop: no validation gain for {cfg.early_stopping_patience} epochs")
            break

    if best_state is not None:
        detector.load_state_dict(best_state)
    if cfg.method == "contrastive":
        detector.set_head_from_prompts(prompts)  # bake the trained text tower into the head
    return result
