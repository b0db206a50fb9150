"""The real CIFAKE sample (../shared/data/cifake-sample/, 20,000 JPEGs): download as `local`, then preprocess.

Skipped when the sample is absent. Counts as its PROVENANCE.md states: 5,000 per split and class,
original file names, no duplicates (the pairs in the published data were excluded when sampling).
"""

import json
import re

import pytest
from conftest import CIFAKE_SAMPLE

from aigi.data import preprocess, sources
from aigi.params import DatasetParams, PreprocessParams

pytestmark = pytest.mark.skipif(not CIFAKE_SAMPLE.is_file(), reason=f"{CIFAKE_SAMPLE} not present")

SAMPLE_SHA256 = "38c392f72a678c261ea4fbbf8af92396030ef1b660c2b4b39303e0e4c90e87e7"  # PROVENANCE.md
CIFAKE_NAME = re.compile(r"^(train|test)/(REAL|FAKE)/\d+( \((?:[2-9]|10)\))?\.jpg$")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    dest = tmp_path_factory.mktemp("sample") / "data" / "raw"
    info = sources.download(DatasetParams(source="local", path=str(CIFAKE_SAMPLE)), 0, dest)
    return dest, info


def test_download_imports_every_image_with_its_original_name(raw):
    dest, info = raw
    assert info["counts"] == {"train/REAL": 5000, "train/FAKE": 5000, "test/REAL": 5000, "test/FAKE": 5000}
    assert info["archive_sha256"] == SAMPLE_SHA256 and info["ignored_non_image_files"] == 0
    assert info["classes"] == ["REAL", "FAKE"] and info["layout"] == "folder"
    assert info["display_names"] == {"REAL": "REAL", "FAKE": "Stable Diffusion 1.4"}
    assert json.loads((dest / "SOURCE.json").read_text()) == info
    sums = (dest / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 20000
    names = [line.split("  ", 1)[1].removeprefix("images/") for line in sums]
    assert all(CIFAKE_NAME.match(n) for n in names), [n for n in names if not CIFAKE_NAME.match(n)][:5]
    assert sum(n.endswith(" (10).jpg") for n in names) == 2000  # 500 per split and class for each suffix


def test_preprocess_subsample_counts_and_no_duplicates(raw, tmp_path):
    dest, _ = raw
    params = PreprocessParams(train_per_class=100, test_per_class=50, val_fraction=0.2)
    m = preprocess.run(dest / "images", tmp_path / "processed", params, seed=0, image_size=32)
    assert m["found"] == {"train/REAL": 5000, "train/FAKE": 5000, "test/REAL": 5000, "test/FAKE": 5000}
    dup = m["duplicates"]
    assert dup["within_train_dropped"] == dup["within_test_dropped"] == dup["train_test_shared"] == 0
    assert m["splits"]["train"]["per_class"] == {"REAL": 80, "FAKE": 80}
    assert m["splits"]["val"]["per_class"] == {"REAL": 20, "FAKE": 20}
    assert m["splits"]["test"]["per_class"] == {"REAL": 50, "FAKE": 50}
    assert m["skipped"] == [] and m["ignored_non_image_files"] == 0
    assert {c: v["top"] for c, v in m["original_sizes"].items()} == {"REAL": {"32x32": 150}, "FAKE": {"32x32": 150}}
    assert m["display_names"] == {"REAL": "REAL", "FAKE": "Stable Diffusion 1.4"}
    table = (tmp_path / "processed" / "test.csv").read_text().splitlines()
    assert table[0] == "file,label,label_name,sha256,width,height"
    assert all(CIFAKE_NAME.match(row.rsplit(",", 5)[0].strip('"')) for row in table[1:])
