"""A detector learns a container leak, and `preprocess.jpeg_align` takes it away (the audit's fix, end to end).

REAL saved as JPEG, FAKE as PNG, the same scenes (tests/container_leak.py): the tiny CLIP trained on
the preprocessed arrays separates the test split perfectly. The same data preprocessed with
`jpeg_align` at REAL's quality leaves nothing to learn: the test AUC is chance.
"""

import numpy as np
import pytest
import torch
from container_leak import REAL_QUALITY, write_container_leak
from sklearn.metrics import roc_auc_score

from aigi.data import preprocess
from aigi.data.store import load_split
from aigi.inference import predict_proba
from aigi.model import TINY, create_detector
from aigi.params import FinetuneParams, PreprocessParams
from aigi.train import train

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]  # two tiny trainings, about a minute


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_container_leak(tmp_path_factory.mktemp("leak") / "raw", 160, 40)


def _test_auc(raw, out, jpeg_align):
    cfg = PreprocessParams(train_per_class="all", test_per_class="all", val_fraction=0.2, workers=1,
                           jpeg_align=jpeg_align)
    manifest = preprocess.run(raw, out, cfg, seed=0, image_size=64)
    assert manifest["jpeg_align"] == jpeg_align and manifest["resize"] == "shorter_side"
    (x, t), (xv, tv), (xs, ts) = (load_split(out, s) for s in ("train", "val", "test"))
    prompts = {"REAL": ["a real photo."], "FAKE": ["an AI-generated image."]}
    detector = create_detector(TINY, "none", prompts, torch.device("cpu"), seed=0)
    ft = FinetuneParams(method="full", epochs=6, lr=1e-3, batch_size=32, weight_decay=0.01, warmup_fraction=0.1,
                        early_stopping_patience=0)
    train(detector, (x, t["label"].to_numpy()), (xv, tv["label"].to_numpy()), ft, prompts, seed=0)
    return roc_auc_score(ts["label"], predict_proba(detector, xs, 64))


def test_the_leak_is_learned_and_jpeg_align_takes_it_away(raw, tmp_path):
    assert _test_auc(raw, tmp_path / "leaky", None) > 0.9
    assert abs(_test_auc(raw, tmp_path / "aligned", REAL_QUALITY) - 0.5) < 0.2


def test_the_classes_differ_only_in_the_container(raw):
    """Decoded, the PNGs re-encoded at REAL's quality are REAL's kind of JPEG: the same smoothness."""
    from aigi.data.images import jpeg_align, load_rgb

    def roughness(files):
        return np.mean([np.abs(np.diff(img.astype(float), axis=1)).mean() for img in files])

    real = [load_rgb(f) for f in sorted((raw / "test" / "REAL").iterdir())]
    fake = [load_rgb(f) for f in sorted((raw / "test" / "FAKE").iterdir())]
    assert roughness(fake) > 1.25 * roughness(real)  # JPEG smoothed REAL's noise away; PNG kept FAKE's
    aligned = [jpeg_align(img, REAL_QUALITY) for img in fake]
    assert roughness(aligned) == pytest.approx(roughness(real), rel=0.1)
