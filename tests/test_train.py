"""The fine-tuning engine in-process on the tiny CLIP: determinism, what each method trains, WiSE-FT, shards."""

import numpy as np
import pytest
import torch

from aigi.distributed import World
from aigi.errors import AigiError
from aigi.model import TINY, create_detector
from aigi.params import FinetuneParams
from aigi.train import Checkpoints, load_checkpoint, save_checkpoint, shard, train, unlock_image_tower

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(prompts):
    return create_detector(TINY, "none", prompts, CPU, seed=0)


def learnable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 64 px images; FAKE ones brighter, so a few steps learn something."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 200, (n, 64, 64, 3), dtype=np.uint8)
    images[labels == 1] += 40
    return images, labels


@pytest.fixture(scope="module")
def data():
    return learnable(96, 0), learnable(32, 1)


def cfg(**kw) -> FinetuneParams:
    base = {"epochs": 2, "lr": 1e-3, "batch_size": 32, "weight_decay": 0.01, "warmup_fraction": 0.2,
            "early_stopping_patience": 0}
    return FinetuneParams(**{**base, **kw})


def train_tiny(prompts, data, **kw):
    det = tiny(prompts)
    result = train(det, *data, cfg(**kw), prompts, seed=3)
    return det, result


def changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}


def without_speed(history):
    return [{k: v for k, v in row.items() if k != "images_per_second"} for row in history]


def test_same_params_and_seed_give_the_same_metrics_and_weights(tiny_prompts, data):
    a, ra = train_tiny(tiny_prompts, data, method="contrastive", grad_accum_steps=2)
    b, rb = train_tiny(tiny_prompts, data, method="contrastive", grad_accum_steps=2)
    assert without_speed(ra.history) == without_speed(rb.history)
    assert len(ra.history) == 2 and ra.history[-1]["val_accuracy"] > 0.5
    assert changed(a.state_dict(), b.state_dict()) == set()
    _, rc = train_tiny(tiny_prompts, data, method="contrastive", grad_accum_steps=2, augment_flip=False)
    assert without_speed(rc.history) != without_speed(ra.history)  # the comparison can tell runs apart


@pytest.mark.parametrize("kw", [{"method": "contrastive", "grad_accum_steps": 2},
                                {"method": "full", "early_stopping_patience": 1, "lr": 3e-2}])
def test_resumed_from_the_first_epochs_checkpoint_ends_bit_identical(tiny_prompts, data, tmp_path, capsys, kw):
    """Stopped after epoch 1's checkpoint (on_epoch of epoch 2 raises before it is saved), then resumed."""
    whole, expected = train_tiny(tiny_prompts, data, epochs=3, **kw)
    path = tmp_path / "finetune.pt"

    def stop_at_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(tiny_prompts), *data, cfg(epochs=3, **kw), tiny_prompts, seed=3,
              checkpoints=Checkpoints(path, "fp", extra={"run_id": "r"}), on_epoch=stop_at_2)
    saved = load_checkpoint(path, "fp")
    assert saved["epoch"] == 1 and saved["run_id"] == "r"
    det = tiny(tiny_prompts)
    result = train(det, *data, cfg(epochs=3, **kw), tiny_prompts, seed=3, checkpoints=Checkpoints(path, "fp", saved))
    assert "resuming after epoch 1 of 3" in capsys.readouterr().out
    assert without_speed(result.history) == without_speed(expected.history)
    assert (result.best_epoch, result.stopped_early, result.final_val) == (
        expected.best_epoch, expected.stopped_early, expected.final_val)
    assert changed(whole.state_dict(), det.state_dict()) == set()


def test_each_method_trains_only_its_parts(tiny_prompts, data):
    start = {k: v.clone() for k, v in tiny(tiny_prompts).state_dict().items()}

    def parts(names):
        return {n.split(".")[0] if n.startswith("head") else n.split(".")[1] for n in names}

    probe, _ = train_tiny(tiny_prompts, data, method="linear_probe", epochs=1)
    assert parts(changed(start, probe.state_dict())) == {"head"}
    full, _ = train_tiny(tiny_prompts, data, method="full", epochs=1)
    assert parts(changed(start, full.state_dict())) == {"head", "visual"}
    locked, _ = train_tiny(tiny_prompts, data, method="contrastive", epochs=1, lock_text=True)
    # the head is rebuilt from the (unchanged) text embeddings and the trained logit scale
    assert parts(changed(start, locked.state_dict())) == {"head", "visual", "logit_scale"}
    both, _ = train_tiny(tiny_prompts, data, method="contrastive", epochs=1)
    text_and_image = {"visual", "transformer", "token_embedding", "logit_scale", "head"}
    assert text_and_image <= parts(changed(start, both.state_dict()))


def test_unlocked_layers_trains_the_last_blocks_and_what_follows(tiny_prompts, data):
    start = {k: v.clone() for k, v in tiny(tiny_prompts).state_dict().items()}
    det, _ = train_tiny(tiny_prompts, data, method="full", epochs=1, unlocked_layers=1)
    moved = changed(start, det.state_dict())
    visual = {n.removeprefix("clip.visual.") for n in moved if n.startswith("clip.visual.")}
    assert any(n.startswith("transformer.resblocks.1.") for n in visual)
    assert {"proj", "ln_post.weight"} <= visual
    assert not any(n.startswith(("transformer.resblocks.0.", "conv1", "ln_pre", "positional_embedding",
                                 "class_embedding")) for n in visual)
    with pytest.raises(AigiError, match="needs a ViT image tower"):
        unlock_image_tower(torch.nn.Linear(2, 2), 1)


def test_wise_alpha_interpolates_fine_tuned_and_zero_shot(tiny_prompts, data):
    zero_shot = tiny(tiny_prompts).state_dict()
    tuned, _ = train_tiny(tiny_prompts, data, method="contrastive", epochs=1)
    half, result = train_tiny(tiny_prompts, data, method="contrastive", epochs=1, wise_alpha=0.5)
    off, _ = train_tiny(tiny_prompts, data, method="contrastive", epochs=1, wise_alpha=0.0)
    assert changed(zero_shot, off.state_dict()) == set()
    for name, value in half.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (tuned.state_dict()[name] + zero_shot[name]) / 2)
    assert set(result.final_val) == {"val_loss", "val_accuracy"}


def test_shards_are_disjoint_equal_and_cover_the_epoch():
    order = np.random.default_rng(0).permutation(11)
    shards = [shard(order, World(rank, 3)) for rank in range(3)]
    assert {len(s) for s in shards} == {3}
    union = np.concatenate(shards)
    assert len(set(union)) == 9 and set(union) <= set(order)
    assert list(shard(order, World())) == list(order)


def test_checkpoint_for_other_params_or_unreadable_is_ignored(tmp_path, capsys):
    path = tmp_path / "ckpt" / "finetune.pt"
    save_checkpoint(path, {"fingerprint": "a", "epoch": 1, "weights": torch.ones(2)})
    assert load_checkpoint(path, "a")["epoch"] == 1
    assert not path.with_name("finetune.pt.tmp").exists()
    assert load_checkpoint(path, "b") is None
    path.write_bytes(b"not a checkpoint")
    assert load_checkpoint(path, "a") is None
    assert "ignoring" in capsys.readouterr().out


def test_n_way_training_learns_every_method_and_p_fake_is_one_minus_p_real():
    """Four classes (REAL + 3 generators), each shifted its own colour: every method trains an N-way head."""
    from aigi.inference import class_probs, predict_proba

    rng = np.random.default_rng(0)

    def split(n):
        labels = np.arange(n) % 4
        images = rng.integers(0, 150, (n, 64, 64, 3), dtype=np.uint8)
        for k in range(1, 4):
            images[labels == k, :, :, k - 1] += 100  # generator k brightens channel k-1
        return images, labels

    train_data, val_data = split(128), split(64)
    prompts = {"REAL": ["a real photo."], "G1": ["made by g1."], "G2": ["made by g2."], "G3": ["made by g3."]}
    for method in ("full", "contrastive", "linear_probe"):
        det = tiny(prompts)
        result = train(det, train_data, val_data, cfg(method=method, epochs=3, lr=3e-3 if method != "linear_probe"
                                                      else 3e-2), prompts, seed=0)
        assert det.head.out_features == 4
        assert result.final_val["val_accuracy"] > 0.5, method  # chance is 0.25
    probs = class_probs(det, val_data[0], 32)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(predict_proba(det, val_data[0], 32), 1 - probs[:, 0])


def test_last_partial_accumulation_group_is_a_mean_of_what_it_has():
    from aigi.train import accumulation_group_size

    # 7 micro-batches, 3 per step: steps of 3, 3 and 1; the last loss is divided by 1, not 3
    assert [accumulation_group_size(m, 7, 3) for m in range(1, 8)] == [3, 3, 3, 3, 3, 3, 1]
    assert [accumulation_group_size(m, 4, 2) for m in range(1, 5)] == [2, 2, 2, 2]
    assert [accumulation_group_size(m, 3, 1) for m in range(1, 4)] == [1, 1, 1]


@pytest.mark.gpu
def test_on_cuda_the_resident_bf16_engine_learns_and_checkpoints_the_cuda_rng(tiny_prompts, data, tmp_path):
    """The CUDA paths (split resident on the GPU, bf16 autocast, the flip generator and RNG state on the
    device), which CPU runs never take. Skipped without CUDA (tests/conftest.py)."""
    cuda = torch.device("cuda")
    det = create_detector(TINY, "none", tiny_prompts, cuda, seed=0)
    path = tmp_path / "finetune.pt"
    result = train(det, *data, cfg(method="contrastive", grad_accum_steps=2), tiny_prompts, seed=3,
                   checkpoints=Checkpoints(path, "fp"))
    assert result.history[-1]["val_accuracy"] > 0.5
    assert det.head.weight.device.type == "cuda" and det.head.weight.dtype == torch.float32
    saved = load_checkpoint(path, "fp")
    assert saved["epoch"] == 2 and "cuda" in saved["rng"]
