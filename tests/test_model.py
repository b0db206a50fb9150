import numpy as np
import pytest
import torch

from aigi.errors import AigiError
from aigi.model import TINY, create_detector, input_size, load_detector, resolve_arch, save_detector


@pytest.fixture
def tiny(tiny_prompts):
    torch.manual_seed(0)
    return create_detector(TINY, "none", tiny_prompts, torch.device("cpu"))


def test_tiny_detector_outputs_two_logits(tiny):
    pixels = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    assert tiny(pixels).shape == (3, 2)
    assert input_size(TINY) == 64


def test_zero_shot_head_is_scaled_prompt_ensemble(tiny, tiny_prompts):
    emb = tiny.class_embeddings(tiny_prompts)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(tiny.head.weight, tiny.logit_scale() * emb)


def test_save_load_roundtrip_without_pickles(tiny, tmp_path):
    save_detector(tiny, tmp_path / "m", {"method": "contrastive"})
    files = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert files == {"clip/open_clip_config.json", "clip/open_clip_model.safetensors", "head.safetensors",
                     "detector.json"}
    loaded, meta = load_detector(tmp_path / "m")
    assert meta["method"] == "contrastive" and meta["classes"] == ["REAL", "FAKE"]
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    tiny.eval()
    torch.testing.assert_close(loaded(pixels), tiny(pixels))


def test_wrong_image_size_is_a_clear_error(tiny):
    with pytest.raises(AigiError, match="re-run preprocess"):
        tiny(torch.zeros((1, 32, 32, 3), dtype=torch.uint8))


def test_unknown_arch_and_unloadable_weights(tiny_prompts, tmp_path):
    with pytest.raises(AigiError, match=r"model.arch 'ViT-Q-99' is not a known open_clip model"):
        resolve_arch("ViT-Q-99")
    with pytest.raises(AigiError, match=r"model.pretrained 'no-such-tag'.*`none` for random init"):
        create_detector(TINY, "no-such-tag", tiny_prompts, torch.device("cpu"))
    with pytest.raises(AigiError, match="no such model-config JSON"):
        resolve_arch(str(tmp_path / "custom.json"))
    with pytest.raises(AigiError, match="not a saved aigi model"):
        load_detector(tmp_path)


def test_custom_architecture_from_json(tmp_path, tiny_prompts):
    import json

    from aigi import model

    cfg = json.loads((model.Path(model.__file__).parent / "model_configs" / "aigi-tiny.json").read_text())
    cfg["vision_cfg"]["image_size"] = 32
    path = tmp_path / "my-clip.json"
    path.write_text(json.dumps(cfg))
    assert input_size(str(path)) == 32
    det = create_detector(str(path), "none", tiny_prompts, torch.device("cpu"))
    assert det(torch.zeros((1, 32, 32, 3), dtype=torch.uint8)).shape == (1, 2)


def test_local_checkpoint_as_pretrained(tiny, tiny_prompts, tmp_path):
    save_detector(tiny, tmp_path / "m", {})
    ckpt = tmp_path / "m" / "clip" / "open_clip_model.safetensors"
    again = create_detector(TINY, str(ckpt), tiny_prompts, torch.device("cpu"))
    torch.testing.assert_close(again.head.weight, tiny.head.weight)


def test_openai_weights_get_quick_gelu_and_keep_it_when_saved():
    from aigi.model import model_config

    assert model_config("ViT-B-32", "openai")["quick_gelu"] is True  # trained with QuickGELU
    assert "quick_gelu" not in model_config("ViT-B-32", None)
    assert "quick_gelu" not in model_config(TINY, None)


def test_logits_stay_fp32_under_bf16_autocast(tiny):
    features = torch.nn.functional.normalize(torch.randn(4, 64), dim=1)
    expected = tiny.head(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tiny.logits(features)
        live = tiny.logits(features, tiny.head.weight / tiny.logit_scale())
    assert got.dtype == live.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(live, expected, rtol=1e-4, atol=1e-4)


def test_importing_the_model_leaves_the_root_logger_alone():
    import subprocess
    import sys

    code = ("import logging; logging.getLogger().setLevel(logging.DEBUG); import aigi.model; "
            "print(logging.getLevelName(logging.getLogger().level))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "DEBUG"


def test_only_load_failures_blame_the_weights(monkeypatch, tiny_prompts):
    import open_clip

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(open_clip, "create_model", oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        create_detector(TINY, "none", tiny_prompts, torch.device("cpu"))

    def missing(*args, **kwargs):
        raise RuntimeError("Pretrained weights (nope) not found for model aigi-tiny")

    monkeypatch.setattr(open_clip, "create_model", missing)
    with pytest.raises(AigiError, match=r"model.pretrained 'nope'.*could not load weights"):
        create_detector(TINY, "nope", tiny_prompts, torch.device("cpu"))
