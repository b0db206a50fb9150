import os
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROOT = Path(__file__).resolve().parents[1]
CIFAKE_SAMPLE = ROOT.parent / "shared" / "data" / "cifake-sample" / "cifake-sample.zip"
MULTIGEN_SAMPLE = ROOT.parent / "shared" / "data" / "multigen-sample" / "multigen-sample.zip"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: where torch sees none they skip (run them on a GPU machine: `pytest -m gpu`)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (marked gpu)"))


@pytest.fixture
def synthetic_raw(tmp_path: Path) -> Path:
    """A small synthetic CIFAKE tree: 40 train + 12 test images per class."""
    from aigi.data.synthetic import write_synthetic

    raw = tmp_path / "raw"
    write_synthetic(raw, 40, 12, seed=0)
    return raw


@pytest.fixture
def tiny_prompts() -> dict[str, list[str]]:
    return {"REAL": ["a real photo.", "a photograph."], "FAKE": ["an AI-generated image."]}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny detector (random weights, zero-shot head) as the finetune stage writes it."""
    import torch

    from aigi.model import TINY, create_detector, save_detector

    prompts = {"REAL": ["a real photo.", "a photograph."], "FAKE": ["an AI-generated image."]}
    detector = create_detector(TINY, "none", prompts, torch.device("cpu"), seed=0)
    folder = tmp_path_factory.mktemp("model") / "finetuned"
    save_detector(detector, folder, {"arch": TINY, "pretrained": "none", "method": "contrastive", "prompts": prompts})
    return folder


MULTIGEN_CLASSES = ["REAL", "DCGAN", "SD14", "VAE"]


@pytest.fixture(scope="session")
def tiny_multigen_model_dir(tmp_path_factory) -> Path:
    """A saved tiny detector with four classes (REAL + three generators), random weights."""
    import torch

    from aigi.model import TINY, create_detector, save_detector

    prompts = {c: [f"an image of class {c}."] for c in MULTIGEN_CLASSES}
    detector = create_detector(TINY, "none", prompts, torch.device("cpu"), seed=0)
    folder = tmp_path_factory.mktemp("multigen-model") / "finetuned"
    save_detector(detector, folder, {"arch": TINY, "pretrained": "none", "method": "full", "prompts": prompts})
    return folder


def write_images(folder: Path, count: int, size: tuple[int, int] = (32, 32), fmt: str = "png", seed: int = 0):
    """`count` random RGB images `0000.<fmt>`... in `folder`; returns their paths."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.{fmt}"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread is several times faster than contending for two.
    Module-scoped, so a module's trained-model fixtures run under it too (use with pytestmark)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
