"""Robustness augmentation: blur and JPEG of a random share of a batch, seeded, on the batch's device."""

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from aigi import augment
from aigi.errors import AigiError
from aigi.params import AugmentParams, parse


def _batch(n=16, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def test_off_is_the_identity_and_draws_nothing():
    x, g = _batch(), torch.Generator().manual_seed(1)
    state = g.get_state()
    assert augment.apply(x, None, g) is x and torch.equal(g.get_state(), state)


def test_same_generator_state_same_batch_and_a_share_changed():
    x, cfg = _batch(64), AugmentParams(p=0.5)
    a = augment.apply(x, cfg, torch.Generator().manual_seed(7))
    b = augment.apply(x, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)  # resume draws the same: bit-identical
    changed = (a != x).flatten(1).any(1).float().mean().item()
    assert 0.5 < changed < 0.95  # each image: blur with p=0.5, then JPEG with p=0.5 -> 75% expected
    assert not torch.equal(a, augment.apply(x, cfg, torch.Generator().manual_seed(8)))


def test_blur_is_a_gaussian_per_image():
    x = _batch(2)
    sigma = torch.tensor([0.0, 1.5])
    out = augment.gaussian_blur(x, sigma)
    assert torch.equal(out[0], x[0])  # sigma 0: untouched
    # reference: the same separable kernel in numpy, edges reflected
    r = 5
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / 1.5) ** 2)
    k /= k.sum()
    img = x[1].numpy().astype(np.float64)
    padded = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="reflect")
    rows = sum(k[i] * padded[:, i : i + img.shape[1]] for i in range(2 * r + 1))
    padded = np.pad(rows, ((r, r), (0, 0), (0, 0)), mode="reflect")
    ref = sum(k[i] * padded[i : i + img.shape[0]] for i in range(2 * r + 1))
    assert np.abs(out[1].numpy().astype(int) - np.clip(np.round(ref), 0, 255)).max() <= 1
    assert out[1].float().diff(dim=1).abs().mean() < x[1].float().diff(dim=1).abs().mean() / 3  # smoother


def test_jpeg_at_a_fixed_quality_is_torchvisions_round_trip():
    x = _batch(3)
    out = augment.apply(x, AugmentParams(p=1.0, blur_sigma=None, jpeg_quality=(40, 40)), torch.Generator())
    for i in range(3):
        want = decode_jpeg(encode_jpeg(x[i].permute(2, 0, 1).contiguous(), quality=40), mode=ImageReadMode.RGB)
        assert torch.equal(out[i], want.permute(1, 2, 0))


def test_ranges_are_validated_at_load():
    with pytest.raises(AigiError, match=r"finetune\.augment\.jpeg_quality"):
        parse({"finetune": {"augment": {"jpeg_quality": [90, 30]}}})
    with pytest.raises(AigiError, match=r"finetune\.augment\.p:"):
        parse({"finetune": {"augment": {"p": 1.5}}})
    assert parse({"finetune": {"augment": {"p": 0.1}}}).finetune.augment.blur_sigma == (0.0, 3.0)


def test_the_training_loop_augments_reproducibly():
    from aigi.model import TINY, create_detector
    from aigi.params import FinetuneParams
    from aigi.train import train

    prompts = {"REAL": ["a real photo."], "FAKE": ["an AI-generated image."]}
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (32, 64, 64, 3), dtype=np.uint8), np.arange(32) % 2)

    def weights(augment):
        det = create_detector(TINY, "none", prompts, torch.device("cpu"), seed=0)
        cfg = FinetuneParams(method="full", epochs=1, lr=1e-3, batch_size=16, early_stopping_patience=0,
                             augment=augment)
        train(det, data, data, cfg, prompts, seed=1)
        return det.head.weight.detach().clone()

    on = {"p": 1.0, "blur_sigma": [0.5, 2.0], "jpeg_quality": [30, 60]}
    first = weights(on)
    assert torch.equal(first, weights(on)) and not torch.equal(first, weights(None))
