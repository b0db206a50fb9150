"""The speed paths of issue 19, each checked on the CPU against the plain path it replaces: bf16 inference,
normalisation folded into the patch embedding, fused SDPA attention, torch.compile, the optimizer."""

import numpy as np
import open_clip
import pytest
import torch

from aigi.classes import p_fake
from aigi.inference import class_probs
from aigi.model import TINY, PixelPatchEmbed, SdpaAttention, create_detector

# bf16 inference vs fp32: the largest |P(fake) difference| allowed on the tiny model (seen: ~0.003).
BF16_P_FAKE_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def tiny():
    prompts = {"REAL": ["a real photo.", "a photograph."], "FAKE": ["an AI-generated image."]}
    return create_detector(TINY, "none", prompts, torch.device("cpu"), seed=0).eval()


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)


def reference_clip(detector):
    """The same weights in a plain open_clip model: nn.MultiheadAttention, conv1 on normalised input."""
    ref = open_clip.create_model(TINY)
    ref.load_state_dict(detector.clip.state_dict())
    return ref.eval()


def normalised(detector, pixels):
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return (x - detector.mean) / detector.std


def test_bf16_inference_agrees_with_fp32(tiny, pixels):
    fp32 = p_fake(class_probs(tiny, pixels, 16))
    with torch.no_grad():
        logits = tiny.inference_model(torch.bfloat16)(torch.from_numpy(pixels))
    assert tiny.inference_model(torch.bfloat16).visual.conv1.weight.dtype == torch.bfloat16
    assert logits.dtype == torch.float32  # the head and softmax stay fp32 (see Detector.logits)
    bf16 = p_fake(logits.softmax(1).double().numpy())
    diff = np.abs(bf16 - fp32)
    assert diff.max() <= BF16_P_FAKE_TOLERANCE
    assert diff.max() > 0  # it really ran in bf16
    assert len(np.unique(bf16.round(6))) > len(bf16) // 2  # P(fake) is not quantised to a few values
    assert next(tiny.parameters()).dtype == torch.float32  # the detector itself is untouched


def test_bf16_copy_is_made_once_and_rebuilt_when_weights_change(tiny):
    first = tiny.inference_model(torch.bfloat16)
    assert tiny.inference_model(torch.bfloat16) is first
    assert tiny.inference_model(torch.float32).visual is tiny.clip.visual  # fp32: no copy
    with torch.no_grad():
        tiny.clip.visual.proj.mul_(1.0)  # an in-place update, as an optimizer step or load_state_dict makes
    again = tiny.inference_model(torch.bfloat16)
    assert again is not first


def test_normalisation_folded_into_the_patch_embedding_is_exact(tiny, pixels):
    assert tiny.fused_normalisation and isinstance(tiny.clip.visual.conv1, PixelPatchEmbed)
    assert set(tiny.clip.state_dict()) == set(reference_clip(tiny).state_dict())  # saved weights unchanged
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        fused = tiny.clip.visual.conv1(tiny.normalise(x))
        plain = torch.nn.Conv2d.forward(tiny.clip.visual.conv1, normalised(tiny, pixels))
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
        ours = tiny(x)
        ref = tiny.head(reference_clip(tiny).encode_image(normalised(tiny, pixels), normalize=True))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_attention_runs_through_sdpa_and_matches_open_clip(tiny, monkeypatch):
    blocks = [m for m in tiny.clip.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert blocks and all(type(m) is SdpaAttention for m in blocks)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(k.get("is_causal")) or sdpa(*a, **k))
    tokens = tiny.tokenizer(["a real photo.", "an AI-generated image."])
    x = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    ref = reference_clip(tiny)
    for grad in (False, True):  # eval without grad is where nn.MultiheadAttention takes its own fast path
        calls.clear()
        with torch.set_grad_enabled(grad):
            text, image = tiny.clip.encode_text(tokens), tiny.clip.encode_image(tiny.normalise(x))
        n_text, n_image = len(tiny.clip.transformer.resblocks), len(tiny.clip.visual.transformer.resblocks)
        assert calls == [True] * n_text + [False] * n_image  # the text tower's mask became is_causal
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(text, ref.encode_text(tokens), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(image, ref.encode_image(normalised(tiny, x.numpy())), rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                            lambda *a, **k: calls.append(k.get("is_causal")) or sdpa(*a, **k))


def test_gradients_match_open_clip_through_both_fast_paths(tiny):
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    ref = reference_clip(tiny)
    ours = tiny.clip.encode_image(tiny.normalise(x)).square().sum()
    theirs = ref.encode_image(normalised(tiny, x.numpy())).square().sum()
    weights = lambda clip: [clip.visual.conv1.weight, clip.visual.transformer.resblocks[0].attn.in_proj_weight]  # noqa: E731
    g1 = torch.autograd.grad(ours, weights(tiny.clip))
    g2 = torch.autograd.grad(theirs, weights(ref))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_switch_resolves_per_device_and_bad_values_name_the_key():
    from pydantic import ValidationError

    from aigi.device import use_compile
    from aigi.params import FinetuneParams

    assert FinetuneParams().compile == "auto"
    assert use_compile("auto", torch.device("cpu")) is False
    assert use_compile("auto", torch.device("cuda")) is True
    assert use_compile(True, torch.device("cpu")) is True and use_compile(False, torch.device("cuda")) is False
    with pytest.raises(ValidationError, match="compile"):
        FinetuneParams(compile="sometimes")


def test_optimizer_is_foreach_on_cpu(monkeypatch):
    from aigi import train as train_module
    from aigi.params import FinetuneParams

    seen = {}
    real = torch.optim.AdamW

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    prompts = {"REAL": ["a real photo."], "FAKE": ["an AI-generated image."]}
    det = create_detector(TINY, "none", prompts, torch.device("cpu"), seed=0)
    images = np.zeros((8, 64, 64, 3), np.uint8)
    labels = np.arange(8) % 2
    cfg = FinetuneParams(method="linear_probe", epochs=1, batch_size=8, early_stopping_patience=0)
    train_module.train(det, (images, labels), (images, labels), cfg, prompts, seed=0)
    assert seen.get("foreach") is True and "fused" not in seen


@pytest.mark.e2e  # torch.compile of the tiny model's training step and forward: about a minute on 2 cores
def test_compile_on_and_off_give_the_same_metrics(tiny_prompts):
    from aigi.inference import predict_proba
    from aigi.params import FinetuneParams
    from aigi.train import train

    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    images = rng.integers(0, 200, (64, 64, 64, 3), dtype=np.uint8)
    images[labels == 1] += 40
    out = {}
    for compile_on in (False, True):
        det = create_detector(TINY, "none", tiny_prompts, torch.device("cpu"), seed=0)
        cfg = FinetuneParams(method="full", epochs=1, lr=1e-3, batch_size=32, early_stopping_patience=0,
                             compile=compile_on)
        result = train(det, (images, labels), (images[:32], labels[:32]), cfg, tiny_prompts, seed=1)
        out[compile_on] = (result.history[-1], predict_proba(det, images[:40], 32, compile=compile_on))
    (eager, p_eager), (comp, p_comp) = out[False], out[True]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert comp[key] == pytest.approx(eager[key], abs=1e-4), key
    np.testing.assert_allclose(p_comp, p_eager, atol=1e-4)  # 40 images at batch 32: the padded last batch too


def _photo(h, w, seed=0):
    """A smooth image with some texture (JPEG decoders agree closely on such content)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 7 + c) * np.cos(y / 9 - c) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def image_files(tmp_path):
    from PIL import Image

    files = {}
    for name, (h, w) in {"a.jpg": (32, 32), "b.jpg": (40, 70), "c.jpg": (32, 32)}.items():
        Image.fromarray(_photo(h, w, len(files))).save(tmp_path / name, quality=90)
        files[name] = tmp_path / name
    Image.fromarray(_photo(30, 30)[..., 0]).save(tmp_path / "grey.jpg", quality=90)
    Image.fromarray(_photo(32, 32)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    Image.fromarray(_photo(32, 32)).save(tmp_path / "d.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    Image.fromarray(_photo(300, 300)).save(tmp_path / "big.jpg", quality=90)
    for name in ("grey.jpg", "cmyk.jpg", "d.png", "broken.jpg", "big.jpg"):
        files[name] = tmp_path / name
    return files


def test_gpu_decode_entry_point_without_a_gpu_is_the_cpu_decoder_and_quiet(image_files, capsys):
    import warnings

    from aigi.data.images import BadImage, decode_images, load_rgb

    paths = list(image_files.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        out = decode_images(paths, torch.device("cpu"), max_pixels=200 * 200)
    for path, got in zip(paths, out, strict=True):
        try:
            expected = load_rgb(path, 200 * 200)
        except BadImage as e:
            assert isinstance(got, BadImage) and str(got) == str(e)
        else:
            assert isinstance(got, np.ndarray) and np.array_equal(got, expected)
    assert capsys.readouterr() == ("", "")
    assert isinstance(out[paths.index(image_files["big.jpg"])], BadImage)  # the size guard still holds


def test_the_gpu_jpeg_decoder_path_matches_pil_within_the_pixel_tolerance(image_files, capsys):
    """The nvJPEG branch's code (batched torchvision decode, fallbacks, resize of tensors) run on the CPU
    decoder; the resize is the shared matrices, so the model inputs are those of the PIL path."""
    from aigi.data.images import BadImage, decode_images, load_rgb, to_model_input, to_model_tensor

    paths = list(image_files.values())
    out = decode_images(paths, torch.device("cpu"), max_pixels=200 * 200, gpu_jpeg=True)
    kinds = {p.name: type(o).__name__ for p, o in zip(paths, out, strict=True)}
    assert kinds == {"a.jpg": "Tensor", "b.jpg": "Tensor", "c.jpg": "Tensor", "grey.jpg": "Tensor",
                     "cmyk.jpg": "ndarray", "d.png": "ndarray", "broken.jpg": "BadImage", "big.jpg": "BadImage"}
    good = [(p, o) for p, o in zip(paths, out, strict=True) if not isinstance(o, BadImage)]
    pil = [load_rgb(p) for p, _ in good]
    for (_, got), ref in zip(good, pil, strict=True):
        assert tuple(got.shape) == ref.shape
        assert np.abs(np.asarray(got, dtype=int) - ref).max() <= 2  # libjpeg builds: the same or a level apart
    ours = to_model_tensor([o for _, o in good], 64, torch.device("cpu")).numpy().astype(int)
    diff = np.abs(ours - to_model_input(pil, 64).astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.02  # tests/test_images.py's resize tolerance
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("factor", [0.75, 0.5, 0.3])
@pytest.mark.parametrize("shape", [(32, 32), (40, 57)])
def test_rescale_on_the_device_matches_pil_within_the_pixel_tolerance(factor, shape):
    from PIL import Image

    from aigi.robustness import rescale, rescale_batch

    img = _photo(*shape, seed=3)
    h, w = shape
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    pil = Image.fromarray(img).resize(small, Image.Resampling.BICUBIC).resize((w, h), Image.Resampling.BICUBIC)
    batch = rescale_batch(factor)(torch.from_numpy(np.stack([img, img])))
    assert batch.shape == (2, h, w, 3) and torch.equal(batch[0], batch[1])
    ours = batch[0].numpy().astype(int)
    diff = np.abs(ours - np.asarray(pil, dtype=int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.02  # tests/test_images.py's resize tolerance
    assert np.array_equal(np.asarray(rescale(factor)(Image.fromarray(img))), ours)  # one implementation


def test_perturbed_batches_equal_sizes_and_keeps_order():
    from aigi.params import RobustnessParams
    from aigi.robustness import perturbations, perturbed

    originals = [_photo(32, 32, 0), _photo(20, 30, 1), _photo(32, 32, 2)]
    for pert in perturbations(RobustnessParams(jpeg_quality=[50], blur_sigma=[1.0], rescale=[0.5])):
        from PIL import Image

        out = perturbed(pert, originals, torch.device("cpu"))
        one_by_one = [np.asarray(pert.apply(Image.fromarray(o))) for o in originals]
        for got, want in zip(out, one_by_one, strict=True):
            assert np.array_equal(np.asarray(got), want), pert.name
