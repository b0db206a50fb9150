import os
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROOT = Path(__file__).resolve().parents[1]
CIFAKE_SAMPLE = ROOT.parent / "shared" / "data" / "cifake-sample" / "cifake-sample.zip"


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
