"""CIFAKE's content classes from its file names (aigi.cifake); accuracy per subject is tested through
metrics.evaluate in test_metrics.py."""

import zipfile
from collections import Counter

import pytest
from conftest import CIFAKE_SAMPLE

from aigi import cifake


def test_content_class_from_cifake_names():
    assert cifake.content_class("test/FAKE/0.jpg") == "airplane"
    assert cifake.content_class("test/REAL/12 (2).jpg") == "automobile"
    assert cifake.content_class("0 (10).png") == "truck"
    assert cifake.content_class("train/REAL/cat_01.jpg") is None
    assert cifake.content_class("5 (11).jpg") is None


def test_real_cifake_names_carry_all_ten_subjects():
    if not CIFAKE_SAMPLE.is_file():
        pytest.skip("CIFAKE sample not present")
    names = [n for n in zipfile.ZipFile(CIFAKE_SAMPLE).namelist() if n.lower().endswith(".jpg")]
    counts = Counter(cifake.content_class(n) for n in names)
    assert None not in counts and set(counts) == set(cifake.CIFAR10_CLASSES)
