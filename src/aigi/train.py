"""Fine-tune a CLIP detector. Read top to bottom: what trains, the forward, the data, the state a checkpoint
holds, then the loop: `train` restores (or starts) a `TrainState`, runs one epoch at a time, and finishes.

Methods (`finetune.method`, the rows of the table in aigi.methods):
- contrastive: both towers trained with CLIP's own objective, restricted to the class prompts.
  With few classes, in-batch image-text pairs of the same class would be false negatives, so each
  image is scored against every class-prompt embedding (REAL and each generator) (recomputed every step, with gradients
  through the text tower) and trained with cross-entropy over classes, as in FLYP (Goyal et al., 2023).
  `lock_text` freezes the text tower: the prompt embeddings are then computed once.
- linear_probe: frozen CLIP, only the N-way head trains (initialised from the zero-shot text weights).
- full: image tower + head, cross-entropy. The text tower is always locked: it only initialised the head.
`unlocked_layers` (contrastive, full) trains only the image tower's last N blocks; `wise_alpha` < 1
interpolates the result with the zero-shot weights (WiSE-FT, Wortsman et al., 2022).

Every epoch ends with a validation pass, a callback (the stage logs to MLflow) and a checkpoint
written atomically; a re-run with the same params resumes from it. Early stopping restores the best
epoch's weights. Under `torchrun` (see aigi.distributed) every rank trains on a disjoint shard of
the epoch's permutation through DistributedDataParallel; metrics are summed over ranks; rank 0
alone writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aigi import augment, distributed
from aigi.device import autocast, maybe_resident, use_compile
from aigi.distributed import SINGLE, World
from aigi.errors import AigiError, one_line
from aigi.methods import HEAD, IMAGE_TOWER, LOGIT_SCALE, METHODS, TEXT_TOWER, Method
from aigi.model import Detector
from aigi.params import FinetuneParams
from aigi.progress import progress

# Test hook: exit abruptly (no cleanup, like a killed process) right after this epoch's checkpoint.
CRASH_AFTER_EPOCH_ENV = "AIGI_FINETUNE_CRASH_AFTER_EPOCH"
CRASH_EXIT_CODE = 75


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    final_val: dict[str, float] = field(default_factory=dict)  # validation of the returned weights (after WiSE-FT)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Every random draw of an epoch derives from this, so a resumed run draws exactly the same numbers."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# ---- what trains -------------------------------------------------------------------------------------------

STEM = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.", "patch_dropout")


def unlock_image_tower(visual: nn.Module, unlocked_layers: int | None) -> None:
    """The whole image tower, or only its last N transformer blocks plus what follows them.

    What follows the blocks (final norm, projection, attention pooling) maps their output to the
    embedding the head reads, so it always trains; the stem (patch embedding, class and position
    embeddings, pre-norm) trains only when every block does.
    """
    visual.requires_grad_(True)
    if not unlocked_layers:
        return
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise AigiError(f"finetune.unlocked_layers needs a ViT image tower (transformer blocks); this model's is "
                        f"{type(visual).__name__}: set finetune.unlocked_layers to null")
    first = len(blocks) - unlocked_layers
    if first <= 0:
        return
    for name, param in visual.named_parameters():
        if name.startswith("transformer.resblocks."):
            param.requires_grad_(int(name.split(".")[2]) >= first)
        else:
            param.requires_grad_(not name.startswith(STEM))


def trainable_parameters(detector: Detector, cfg: FinetuneParams) -> list[torch.nn.Parameter]:
    """Freeze what the method (aigi.methods) does not train; return what it does, in the detector's order."""
    parts = METHODS[cfg.method].trains
    detector.requires_grad_(False)
    if TEXT_TOWER in parts and not cfg.lock_text:
        for name, param in detector.clip.named_parameters():
            if not name.startswith("visual.") and name != "logit_scale":
                param.requires_grad_(True)
    if IMAGE_TOWER in parts:
        unlock_image_tower(detector.clip.visual, cfg.unlocked_layers)
    if LOGIT_SCALE in parts:
        detector.clip.logit_scale.requires_grad_(True)
    if HEAD in parts:
        detector.head.requires_grad_(True)
    return [param for param in detector.parameters() if param.requires_grad]


def param_groups(detector: Detector, trainable: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases, embeddings' scalars and the logit scale."""
    names = {id(param): name for name, param in detector.named_parameters()}
    decay, no_decay = [], []
    for param in trainable:
        name = names[id(param)]
        if param.ndim < 2 or "logit_scale" in name or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ---- the forward -------------------------------------------------------------------------------------------


class ClassLogits(nn.Module):
    """pixels -> class logits for the method, as one module, so that DDP and torch.compile see
    every trained parameter (text tower included) used in a single forward."""

    def __init__(self, detector: Detector, method: Method, prompts: dict[str, list[str]], text_trainable: bool):
        super().__init__()
        self.detector, self.method, self.prompts, self.text_trainable = detector, method, prompts, text_trainable
        self.fixed_text = None
        if method.scores_text:
            with torch.no_grad():  # tokenises once, outside any compiled region; the embedding if locked
                fixed = detector.class_embeddings(prompts)
            self.fixed_text = None if text_trainable else fixed

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.method.scores_text:
            return self.detector(pixels)
        text = self.detector.class_embeddings(self.prompts) if self.fixed_text is None else self.fixed_text
        return self.detector.logits(self.detector.features(pixels), text)


# ---- the data ----------------------------------------------------------------------------------------------


def batches(images, labels: np.ndarray, batch_size: int, order: np.ndarray, device: torch.device) -> Iterator:
    """Slices of the uint8 array (memory-mapped or resident on the device) moved once per batch.

    One fancy-index per batch (C, not a Python loop over images); normalising and augmenting happen
    on the device, inside the model's forward.
    """
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])  # sorted: sequential reads from the memmap
        if isinstance(images, torch.Tensor):
            x = images[torch.from_numpy(idx).to(images.device)]
        else:
            x = torch.from_numpy(images[idx])
            if device.type == "cuda":
                x = x.pin_memory()
        yield x.to(device, non_blocking=True), torch.from_numpy(labels[idx]).to(device, non_blocking=True)


def shard(order: np.ndarray, world: World) -> np.ndarray:
    """This rank's disjoint share of the epoch's order; every rank gets the same count (the few
    left over are dropped this epoch, a different few each epoch) so all ranks take the same steps."""
    usable = len(order) - len(order) % world.size
    return order[world.rank : usable : world.size]


def accumulation_group_size(micro: int, micro_batches: int, accum: int) -> int:
    """How many micro-batches (1-based `micro`) share this optimizer step: `accum`, or fewer for an epoch's
    last group, whose gradient is then the mean of what it has (not shrunk by the missing ones)."""
    first = (micro - 1) // accum * accum
    return min(accum, micro_batches - first)


def flip_half(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip of a random half of an NHWC batch, on its device."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(2), x)


@torch.no_grad()
def evaluate_loss_accuracy(logits_fn, images, labels, batch_size, device, world: World = SINGLE
                           ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy; under torchrun each rank scores a shard and the sums are all-reduced."""
    sums, n = torch.zeros(2, device=device), 0
    for x, y in batches(images, labels, batch_size, np.arange(world.rank, len(labels), world.size), device):
        with autocast(device):
            logits = logits_fn(x).float()
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum()])
        n += len(y)
    totals = torch.cat([sums, torch.tensor([float(n)], device=device)])
    loss, correct, n = distributed.all_reduce_sum(totals).tolist()
    return loss / n, correct / n


# ---- weights, RNG, code -------------------------------------------------------------------------------------


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def code_fingerprint(script: Path) -> dict[str, str]:
    """What a checkpoint's training also depends on besides params and data: the source of `script` and
    of every aigi module it imports (with the model configs), and the versions of the libraries doing
    the arithmetic."""
    import open_clip

    from aigi.imports import PACKAGE, local_modules

    files = [Path(script), *local_modules(script), *sorted((PACKAGE / "model_configs").glob("*.json"))]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return {"source_sha256": digest.hexdigest(), "torch": torch.__version__,
            "open_clip": getattr(open_clip, "__version__", "unknown")}


def wise_ft(detector: Detector, zero_shot: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT: every floating-point weight becomes alpha * fine-tuned + (1 - alpha) * zero-shot.

    The whole state is interpolated, the head included: for contrastive the zero-shot head (the
    prompt embeddings times the logit scale) is paired with the fine-tuned head baked from the
    trained text tower, so alpha = 0 gives back exactly the zero-shot detector and 1 the fine-tuned one.
    """
    state = detector.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if value.is_floating_point():
                value.lerp_(zero_shot[name].to(value.device), 1.0 - alpha)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def compiled(module: nn.Module, enabled: bool) -> nn.Module:
    if not enabled:
        return module
    return torch.compile(module)


# ---- the state and its checkpoint -------------------------------------------------------------------------


@dataclass
class TrainState:
    """What changes while training, and so what a checkpoint holds: a run resumed from it continues bit for bit.

    `trainable` (what the method trains) is rebuilt, not saved: it follows from the params.
    """

    detector: Detector
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    epoch: int = 0  # the last finished epoch
    history: list[dict[str, float]] = field(default_factory=list)  # a row per finished epoch
    best_val: float = -1.0  # the best validation accuracy so far, reached at `best_epoch`
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None  # a CPU copy of the weights of `best_epoch`
    stopped_early: bool = False

    @classmethod
    def fresh(cls, detector: Detector, cfg: FinetuneParams, steps_per_epoch: int) -> TrainState:
        """Nothing trained yet: what the method trains, its AdamW and its cosine schedule with warm-up."""
        trainable = trainable_parameters(detector, cfg)
        # One fused kernel for the whole update on CUDA; multi-tensor (foreach) ops elsewhere. Same arithmetic.
        fast = {"fused": True} if detector.mean.device.type == "cuda" else {"foreach": True}
        optimizer = torch.optim.AdamW(param_groups(detector, trainable, cfg.weight_decay), lr=cfg.lr, **fast)
        total_steps = steps_per_epoch * cfg.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine_with_warmup(total_steps, round(total_steps * cfg.warmup_fraction))
        )
        return cls(detector, trainable, optimizer, scheduler)

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "history": self.history, "model": self.detector.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.detector.mean.device), "best_val": self.best_val, "best_epoch": self.best_epoch,
            "best_model": None if self.best_epoch == self.epoch else self.best_model,  # None: the same as "model"
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], detector: Detector, cfg: FinetuneParams,
                        steps_per_epoch: int) -> TrainState:
        """The state `to_checkpoint` saved, in `detector` and a fresh optimizer and schedule built as before."""
        state = cls.fresh(detector, cfg, steps_per_epoch)
        detector.load_state_dict(checkpoint["model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        state.scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"], detector.mean.device)
        state.epoch, state.history = checkpoint["epoch"], checkpoint["history"]
        state.best_val, state.best_epoch = checkpoint["best_val"], checkpoint["best_epoch"]
        best = checkpoint["best_model"]
        state.best_model = best if best is not None else cpu_copy(detector.state_dict())
        return state

    def record(self, row: dict[str, float]) -> None:
        """Close the epoch of `row`: it joins the history, and its weights are kept if they validate best so far."""
        self.epoch = int(row["epoch"])
        self.history.append(row)
        if row["val_accuracy"] > self.best_val:
            self.best_val, self.best_epoch = row["val_accuracy"], self.epoch
            self.best_model = cpu_copy(self.detector.state_dict())

    def patience_ran_out(self, patience: int) -> bool:
        return bool(patience) and self.epoch - self.best_epoch >= patience


@dataclass
class Checkpoints:
    """Where rank 0 writes the state after every epoch (with `extra`, e.g. the MLflow run id, beside it), the
    fingerprint it must match to be resumed (params, data, code, world size), and the state to resume from."""

    path: Path
    fingerprint: str
    resume: dict[str, Any] | None = None  # from load_checkpoint(path, fingerprint)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, state: TrainState) -> None:
        save_checkpoint(self.path, {"fingerprint": self.fingerprint, **state.to_checkpoint(), **self.extra})
        if os.environ.get(CRASH_AFTER_EPOCH_ENV) == str(state.epoch):
            print(f"{CRASH_AFTER_EPOCH_ENV}={state.epoch}: exiting abruptly", flush=True)
            os._exit(CRASH_EXIT_CODE)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: written to a temp file, synced, then renamed; a crash mid-write leaves the previous one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it was written for this `fingerprint` (params, data, code, world size)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: start over rather than crash
        print(f"ignoring {path}: unreadable ({one_line(e, 120)})")
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"ignoring {path}: it was written for other params, data, code, library versions or number of "
              f"processes; training starts afresh")
        return None
    return state


# ---- the loop ----------------------------------------------------------------------------------------------


def train(
    detector: Detector,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    cfg: FinetuneParams,
    prompts: dict[str, list[str]],
    seed: int,
    checkpoints: Checkpoints | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train `detector` in place and return the per-epoch history: restore (or start), one epoch at a time
    (train, validate, record, checkpoint), then finish (best weights, head, WiSE-FT).

    `checkpoints`: where rank 0 saves the state after every epoch and the state to resume from.
    `on_epoch`: called on rank 0 with each epoch's row (the stage logs it to MLflow).
    """
    device = detector.mean.device
    seed_everything(seed)
    zero_shot = cpu_copy(detector.state_dict()) if cfg.wise_alpha < 1 else None
    train_images, train_labels = maybe_resident(train_data[0], device), train_data[1]
    val_images, val_labels = maybe_resident(val_data[0], device), val_data[1]

    state = restore(detector, cfg, steps_per_epoch(len(train_labels), cfg, world), checkpoints, world)
    forward = ClassLogits(detector, METHODS[cfg.method], prompts, text_trainable=not cfg.lock_text)
    compile_on = use_compile(cfg.compile, device)  # auto: on for CUDA, off for CPU
    model = compiled(distributed_model(forward, world), compile_on)

    first_epoch = state.epoch + 1  # of this process: where a torch.compile failure shows
    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        train_loss, train_acc, speed = train_one_epoch(model, state, (train_images, train_labels), cfg, seed,
                                                       world, compiling=compile_on and epoch == first_epoch)
        detector.eval()
        val_loss, val_acc = evaluate_loss_accuracy(forward, val_images, val_labels, cfg.eval_batch_size, device, world)
        row = {
            "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc, "lr": state.scheduler.get_last_lr()[0],
            "images_per_second": speed,
        }
        if world.is_main:
            print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
        state.record(row)
        if on_epoch and world.is_main:
            on_epoch(row)
        if checkpoints and world.is_main:
            checkpoints.save(state)
        if state.patience_ran_out(cfg.early_stopping_patience):
            state.stopped_early = True
            if world.is_main:
                print(f"early stop: no validation gain for {cfg.early_stopping_patience} epochs")

    return finish(state, cfg, prompts, zero_shot, (val_images, val_labels), world)


def steps_per_epoch(n_images: int, cfg: FinetuneParams, world: World) -> int:
    """Optimizer steps in an epoch of this rank's shard (the schedule's unit)."""
    micro_batches = math.ceil((n_images // world.size) / cfg.batch_size)
    return math.ceil(micro_batches / cfg.grad_accum_steps)


def restore(detector: Detector, cfg: FinetuneParams, steps: int, checkpoints: Checkpoints | None,
            world: World) -> TrainState:
    """The state to train from: the checkpoint's if there is one to resume, else a fresh one."""
    resume = checkpoints.resume if checkpoints else None
    if resume is None:
        return TrainState.fresh(detector, cfg, steps)
    state = TrainState.from_checkpoint(resume, detector, cfg, steps)
    if world.is_main:
        print(f"resuming after epoch {state.epoch} of {cfg.epochs}")
    # the crash may have come after early stopping had already decided
    state.stopped_early = state.patience_ran_out(cfg.early_stopping_patience)
    return state


def distributed_model(forward: ClassLogits, world: World) -> nn.Module:
    """`forward` as DistributedDataParallel under torchrun (gradients averaged over ranks), else itself."""
    if not world.distributed:
        return forward
    device = forward.detector.mean.device
    return nn.parallel.DistributedDataParallel(
        forward, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False
    )


def train_one_epoch(model: nn.Module, state: TrainState, data: tuple[np.ndarray, np.ndarray], cfg: FinetuneParams,
                    seed: int, world: World, compiling: bool = False) -> tuple[float, float, float]:
    """Epoch `state.epoch + 1` over this rank's shard of a seeded permutation: mean loss, accuracy, images/s.

    Its random draws (order, flips, dropout) derive from (seed, epoch, rank) alone, so a resumed run draws
    the same. `compiling`: a failure of the first forward is torch.compile's, said so in one line.
    """
    images, labels = data
    detector, epoch, device = state.detector, state.epoch + 1, state.detector.mean.device
    detector.train()
    torch.manual_seed(epoch_seed(seed, epoch, world.rank))  # dropout etc., per rank
    order = shard(np.random.default_rng([seed, epoch]).permutation(len(labels)), world)
    flips = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch, world.rank))
    micro_batches = math.ceil(len(order) / cfg.batch_size)
    sums = torch.zeros(2, device=device)  # loss sum, correct: on the device, no sync per step
    seen = 0  # on the host: a device scalar built per step would be a host-to-device copy each step
    t0 = time.perf_counter()
    bar = progress(total=len(order), desc=f"epoch {epoch}/{cfg.epochs}", unit="img", leave=False,
                   disable=None if world.is_main else True)
    for micro, (x, y) in enumerate(batches(images, labels, cfg.batch_size, order, device), start=1):
        if cfg.augment_flip:
            x = flip_half(x, flips)
        x = augment.apply(x, cfg.augment, flips)  # finetune.augment: blur and JPEG; nothing when null
        step_now = micro % cfg.grad_accum_steps == 0 or micro == micro_batches
        group = accumulation_group_size(micro, micro_batches, cfg.grad_accum_steps)
        sync = model.no_sync() if world.distributed and not step_now else contextlib.nullcontext()
        with sync:
            try:
                with autocast(device):
                    logits = model(x).float()
            except Exception as e:
                if compiling and micro == 1:
                    raise AigiError(f"finetune.compile: torch.compile failed ({one_line(e)}); "
                                    f"set finetune.compile: false") from None
                raise
            loss = F.cross_entropy(logits, y)
            (loss / group).backward()
        if step_now:
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(state.trainable, cfg.max_grad_norm)
            state.optimizer.step()
            state.optimizer.zero_grad(set_to_none=True)
            state.scheduler.step()
        sums += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum()])
        seen += len(y)
        bar.update(len(y))
        if micro % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{sums[0].item() / seen:.4f}")
    totals = torch.cat([sums, torch.tensor([float(seen)], device=device)])
    loss_sum, correct, seen = distributed.all_reduce_sum(totals).tolist()  # waits for the device
    seconds = time.perf_counter() - t0
    bar.close()
    return loss_sum / seen, correct / seen, seen / seconds


def finish(state: TrainState, cfg: FinetuneParams, prompts: dict[str, list[str]],
           zero_shot: dict[str, torch.Tensor] | None, val_data: tuple[np.ndarray, np.ndarray],
           world: World) -> TrainResult:
    """The weights to save: the best epoch's, the head baked from the text tower if the method says so, then
    WiSE-FT towards the zero-shot weights (validated again, since they are new)."""
    detector = state.detector
    if state.best_model is not None:
        detector.load_state_dict(state.best_model)
    if METHODS[cfg.method].head_from_text:
        detector.set_head_from_prompts(prompts)  # bake the trained text tower into the head
    detector.eval()
    result = TrainResult(state.history, state.best_epoch, state.stopped_early)
    if zero_shot is not None:
        wise_ft(detector, zero_shot, cfg.wise_alpha)
        loss, acc = evaluate_loss_accuracy(detector, *val_data, cfg.eval_batch_size, detector.mean.device, world)
        result.final_val = {"val_loss": loss, "val_accuracy": acc}
    elif state.best_epoch:
        best = state.history[state.best_epoch - 1]
        result.final_val = {"val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"]}
    return result
