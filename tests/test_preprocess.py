import hashlib
import json
import shutil

import numpy as np
import pytest

from aigi.data import preprocess
from aigi.data.images import load_rgb, to_model_input
from aigi.data.store import ArrayWriter, load_split
from aigi.errors import AigiError
from aigi.params import PreprocessParams


def _run(raw, out, **kw):
    cfg = PreprocessParams(**{"train_per_class": "all", "test_per_class": "all", "workers": 2, "chunk_size": 16, **kw})
    return preprocess.run(raw, out, cfg, seed=3, image_size=48)


def test_splits_counts_arrays_and_manifest(synthetic_raw, tmp_path):
    out = tmp_path / "processed"
    manifest = _run(synthetic_raw, out, train_per_class=30, test_per_class=10, val_fraction=0.2)
    assert manifest["splits"]["train"]["per_class"] == {"REAL": 24, "FAKE": 24}
    assert manifest["splits"]["val"]["per_class"] == {"REAL": 6, "FAKE": 6}
    assert manifest["splits"]["test"]["per_class"] == {"REAL": 10, "FAKE": 10}
    images, table = load_split(out, "train")
    assert images.shape == (48, 48, 48, 3) and images.dtype == np.uint8
    assert isinstance(images, np.memmap)
    assert list(table.columns) == ["file", "label", "label_name", "sha256", "width", "height"]
    assert (table.width == 32).all() and (table.height == 32).all()
    # every row holds the image its table row names, resized by the shared function
    for i in (0, len(table) // 2, len(table) - 1):
        expected = to_model_input([load_rgb(synthetic_raw / table.file[i])], 48)[0]
        assert (images[i] == expected).all()
        assert table.sha256[i] == hashlib.sha256((synthetic_raw / table.file[i]).read_bytes()).hexdigest()
    # train, val and test never share a file
    files = {s: set(load_split(out, s)[1]["file"]) for s in ("train", "val", "test")}
    assert not files["train"] & files["val"] and all(f.startswith("test/") for f in files["test"])
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["image_size"] == 48 and "bicubic" in saved["interpolation"]
    assert saved["classes"] == ["REAL", "FAKE"] and saved["unseen_generators"] == []
    assert saved["display_names"] == {"REAL": "REAL", "FAKE": "FAKE"}  # no SOURCE.json beside this raw folder
    assert saved["original_sizes"]["FAKE"]["top"] == {"32x32": 40}
    assert len(saved["splits"]["test"]["pixels_sha256"]) == 64
    assert not (tmp_path / "processed.partial").exists()


def test_same_seed_same_output(synthetic_raw, tmp_path):
    a = _run(synthetic_raw, tmp_path / "a", train_per_class=20, test_per_class=5)
    b = _run(synthetic_raw, tmp_path / "b", train_per_class=20, test_per_class=5)
    assert a["splits"] == b["splits"]


def test_too_many_requested_names_the_key(synthetic_raw, tmp_path):
    with pytest.raises(AigiError, match=r"preprocess.train_per_class is 1000 but train/REAL has only 40"):
        _run(synthetic_raw, tmp_path / "p", train_per_class=1000)


def test_duplicates_reported_and_train_copies_of_test_dropped(synthetic_raw, tmp_path):
    shutil.copy(synthetic_raw / "test" / "FAKE" / "0000.png", synthetic_raw / "train" / "FAKE" / "dup-of-test.png")
    shutil.copy(synthetic_raw / "train" / "REAL" / "0000.png", synthetic_raw / "train" / "REAL" / "dup.png")
    m = _run(synthetic_raw, tmp_path / "p")
    d = m["duplicates"]
    assert d["train_test_shared"] == 1 and d["train_copies_of_test_dropped"] == 1
    assert d["within_train_dropped"] == 1
    assert d["within_train_dropped_per_class"] == {"REAL": 1}
    assert d["train_copies_of_test_dropped_per_class"] == {"FAKE": 1}
    assert m["splits"]["train"]["count"] + m["splits"]["val"]["count"] == 80
    kept = _run(synthetic_raw, tmp_path / "q", drop_train_duplicates_of_test=False)
    assert kept["duplicates"]["train_copies_of_test_dropped"] == 0
    assert kept["splits"]["train"]["count"] + kept["splits"]["val"]["count"] == 81


def test_bad_images_skipped_and_listed_or_fail(synthetic_raw, tmp_path):
    (synthetic_raw / "test" / "REAL" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (synthetic_raw / "test" / "REAL" / "readme.txt").write_text("not an image")
    m = _run(synthetic_raw, tmp_path / "p")
    assert m["skipped"] == [{"file": "test/REAL/broken.jpg", "reason": m["skipped"][0]["reason"]}]
    assert m["splits"]["test"]["per_class"]["REAL"] == 12 and m["ignored_non_image_files"] == 1
    assert len(np.load(tmp_path / "p" / "test.npy", mmap_mode="r")) == 24
    with pytest.raises(AigiError, match=r"test/REAL/broken.jpg: .*set preprocess.on_bad_image: skip"):
        _run(synthetic_raw, tmp_path / "f", on_bad_image="fail")
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.partial").exists()


def test_odd_modes_sizes_and_bombs_through_the_stage(synthetic_raw, tmp_path):
    from PIL import Image

    folder = synthetic_raw / "test" / "FAKE"
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    rgb.convert("L").save(folder / "grey.png")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(folder / "clear.png")  # transparent -> white
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.resize((64, 48)).save(folder / "wide.png")  # not 32x32: accepted, centre-cropped, counted
    Image.new("L", (2000, 2000)).save(folder / "bomb.png")  # 4 Mpx in a few KB
    m = _run(synthetic_raw, tmp_path / "p", max_image_pixels=1_000_000)
    assert m["splits"]["test"]["per_class"]["FAKE"] == 12 + 5
    assert m["original_sizes"]["FAKE"]["top"] == {"32x32": 40 + 12 + 4, "64x48": 1}
    assert m["original_sizes"]["FAKE"]["width"] == {"min": 32, "median": 32, "max": 64}
    assert m["splits"]["test"]["skipped_per_class"] == {"FAKE": 1}
    assert m["skipped"] == [{"file": "test/FAKE/bomb.png", "reason": m["skipped"][0]["reason"]}]
    assert "decompression-bomb guard" in m["skipped"][0]["reason"]
    images, table = load_split(tmp_path / "p", "test")
    assert (images[list(table.file).index("test/FAKE/clear.png")] == 255).all()
    grey = images[list(table.file).index("test/FAKE/grey.png")].astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_missing_raw_folder(tmp_path):
    with pytest.raises(AigiError, match="re-run the download stage"):
        _run(tmp_path / "nothing", tmp_path / "p")


def test_array_writer_compacts_blocks_with_holes(tmp_path):
    w = ArrayWriter(tmp_path / "x.npy", capacity=10, row_shape=(2, 2, 3))
    w.rows.write(0, np.ones((3, 2, 2, 3), np.uint8))  # slot 0..4, 3 rows filled
    w.rows.write(5, np.full((2, 2, 2, 3), 7, np.uint8))  # slot 5..9, 2 rows filled
    assert w.close([(0, 3), (5, 2)]) == 5
    arr = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert arr.shape == (5, 2, 2, 3) and arr[:3].max() == 1 and (arr[3:] == 7).all()
    assert (tmp_path / "x.npy").stat().st_size == arr.offset + 5 * 12


def test_test_split_does_not_depend_on_train_params(synthetic_raw, tmp_path):
    import pandas as pd

    _run(synthetic_raw, tmp_path / "a", train_per_class=30, test_per_class=8, val_fraction=0.2)
    _run(synthetic_raw, tmp_path / "b", train_per_class=12, test_per_class=8, val_fraction=0.3)
    a, b = (pd.read_csv(tmp_path / d / "test.csv") for d in ("a", "b"))
    assert a["file"].tolist() == b["file"].tolist()
    assert (np.load(tmp_path / "a" / "test.npy") == np.load(tmp_path / "b" / "test.npy")).all()


@pytest.mark.parametrize("damage", ["truncated_npy", "bad_csv", "missing_csv", "row_mismatch"])
def test_a_corrupt_processed_split_is_one_line(tmp_path, damage):
    np.save(tmp_path / "test.npy", np.zeros((2, 4, 4, 3), np.uint8))
    (tmp_path / "test.csv").write_text("file,label,label_name\na.png,0,REAL\nb.png,1,FAKE\n")
    if damage == "truncated_npy":
        data = (tmp_path / "test.npy").read_bytes()
        (tmp_path / "test.npy").write_bytes(data[:40])
    elif damage == "bad_csv":
        (tmp_path / "test.csv").write_bytes(b"")
    elif damage == "missing_csv":
        (tmp_path / "test.csv").unlink()
    else:
        (tmp_path / "test.csv").write_text("file,label,label_name\na.png,0,REAL\n")
    with pytest.raises(AigiError, match=r"preprocess") as err:
        load_split(tmp_path, "test")
    assert "\n" not in str(err.value)


@pytest.fixture
def multigen_raw(tmp_path):
    """A synthetic tree with three generators: 40 train + 12 test images per class."""
    from aigi.data.synthetic import write_synthetic

    raw = tmp_path / "raw"
    write_synthetic(raw, 40, 12, seed=0, generators=["SD14", "dcgan", "VAE"])
    return raw


def test_n_classes_real_first_then_sorted_per_class_counts(multigen_raw, tmp_path):
    m = _run(multigen_raw, tmp_path / "p", train_per_class=30, test_per_class=10, val_fraction=0.2)
    assert m["classes"] == ["REAL", "dcgan", "SD14", "VAE"]  # case-insensitive order after REAL
    assert m["splits"]["train"]["per_class"] == {"REAL": 24, "dcgan": 24, "SD14": 24, "VAE": 24}
    assert m["splits"]["test"]["per_class"] == {"REAL": 10, "dcgan": 10, "SD14": 10, "VAE": 10}
    _, table = load_split(tmp_path / "p", "test")
    assert {(r.label_name, r.label) for r in table.itertuples()} == {("REAL", 0), ("dcgan", 1), ("SD14", 2),
                                                                      ("VAE", 3)}


def test_unseen_generator_never_reaches_train_or_val(multigen_raw, tmp_path):
    m = preprocess.run(multigen_raw, tmp_path / "p", PreprocessParams(workers=2, train_per_class="all",
                       test_per_class="all"), seed=3, image_size=32, unseen=["SD14"])
    assert m["classes"] == ["REAL", "dcgan", "VAE"] and m["unseen_generators"] == ["SD14"]
    for split in ("train", "val"):
        _, table = load_split(tmp_path / "p", split)
        assert "SD14" not in set(table.label_name) and not any("/SD14/" in f for f in table.file)
        assert set(table.label) == {0, 1, 2}
    _, test = load_split(tmp_path / "p", "test")
    held = test[test.label_name == "SD14"]
    assert len(held) == 12 and (held.label == -1).all()
    assert set(test[test.label >= 0].label_name) == {"REAL", "dcgan", "VAE"}
    # the classes the model trains on keep their own draws
    assert m["splits"]["train"]["per_class"]["VAE"] + m["splits"]["val"]["per_class"]["VAE"] == 40


def test_unknown_unseen_generator_is_one_line(multigen_raw, tmp_path):
    with pytest.raises(AigiError, match=r"unseen_generators: MJ is not a generator in the data \(classes found: "
                                        r"REAL, dcgan, SD14, VAE\)"):
        preprocess.run(multigen_raw, tmp_path / "p", PreprocessParams(workers=1), 0, 32, unseen=["MJ"])
    assert not (tmp_path / "p").exists()


def test_any_size_originals_go_through_and_sizes_are_recorded(tmp_path):
    from conftest import write_images

    raw = tmp_path / "raw"
    for seed, (split, n) in enumerate((("train", 10), ("test", 4))):
        write_images(raw / split / "REAL", n, size=(768, 1024), fmt="jpg", seed=seed)
        write_images(raw / split / "GEN", n, size=(61, 97), seed=10 + seed)
    m = _run(raw, tmp_path / "p")
    assert m["original_sizes"]["REAL"]["top"] == {"1024x768": 14}
    assert m["original_sizes"]["GEN"]["height"] == {"min": 61, "median": 61, "max": 61}
    images, table = load_split(tmp_path / "p", "test")
    assert images.shape[1:] == (48, 48, 3) and set(table.width) == {1024, 97}
    expected = to_model_input([load_rgb(raw / table.file[0])], 48)[0]
    assert (images[0] == expected).all()


def test_plan_memory_is_flat_over_fifty_classes(tmp_path):
    """50 classes of tiny images: the plan keeps a few hundred bytes per image, nothing per pixel."""
    import tracemalloc

    from PIL import Image

    raw = tmp_path / "raw"
    tiny = Image.new("RGB", (4, 4))
    for k in range(50):
        name = "REAL" if k == 0 else f"GEN{k:02d}"
        for split, n in (("train", 40), ("test", 10)):
            (raw / split / name).mkdir(parents=True)
            for i in range(n):
                tiny.putpixel((0, 0), (k, i, 0))
                tiny.save(raw / split / name / f"{i:03d}.png")
    tracemalloc.start()
    plan = preprocess.plan(raw, PreprocessParams(train_per_class=30, test_per_class=10), seed=0)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(plan.classes) == 50 and len(plan.splits["test"]) == 500
    assert sum(len(v) for v in plan.splits.values()) == 50 * 40
    # Bytes per image found (measured: ~210 kept, ~430 at peak): 1.3 M images plan in well under 1 GB.
    assert kept / 2500 < 400 and peak / 2500 < 1000


# ---------------------------------------------------------------- named datasets: train on one, test on another


@pytest.fixture
def two_datasets(tmp_path):
    """data/raw/<name>/images of two synthetic datasets: `cifake` (REAL, FAKE) with splits, and `other`
    (REAL, SD14, GAN) as `<CLASS>/` folders under test/ alone, drawn from another seed."""
    from aigi.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "raw" / "cifake" / "images", 20, 6, seed=0)
    write_synthetic(tmp_path / "raw" / "other" / "images", 0, 8, seed=1, generators=["SD14", "GAN"])
    return tmp_path / "raw"


def _run_dataset(raw, out, name, role, **kw):
    cfg = PreprocessParams(train_per_class="all", test_per_class="all", workers=1, chunk_size=16)
    return preprocess.run(raw / name / "images", out / name, cfg, seed=3, image_size=32, role=role, **kw)


def test_two_named_datasets_the_training_one_split_the_other_test_only(two_datasets, tmp_path):
    out = tmp_path / "processed"
    train = _run_dataset(two_datasets, out, "cifake", "train")
    test = _run_dataset(two_datasets, out, "other", "test", class_aliases={"SD14": "FAKE"})
    assert (train["dataset"], train["role"], list(train["splits"])) == ("cifake", "train", ["train", "val", "test"])
    assert (test["dataset"], test["role"], list(test["splits"])) == ("other", "test", ["test"])
    assert sorted(p.name for p in (out / "other").iterdir()) == ["manifest.json", "test.csv", "test.npy"]
    # label_name is the class after the aliases, the manifest records them; REAL first, then sorted
    assert test["classes"] == ["REAL", "FAKE", "GAN"] and test["class_aliases"] == {"SD14": "FAKE"}
    assert test["unseen_generators"] == [] and test["splits"]["test"]["per_class"] == {"REAL": 8, "FAKE": 8, "GAN": 8}
    _, table = load_split(out / "other", "test")
    assert {(r.label_name, r.label) for r in table.itertuples()} == {("REAL", 0), ("FAKE", 1), ("GAN", 2)}
    assert set(table[table.label_name == "FAKE"].file.str.split("/").str[1]) == {"SD14"}  # the raw folder
    assert json.loads((out / "other" / "manifest.json").read_text()) == test


def test_a_test_set_needs_no_train_folder_but_the_training_dataset_does(two_datasets, tmp_path):
    with pytest.raises(AigiError, match=r"other/images/train is missing; re-run the download stage "
                                        r"\(dvc repro download@other\)"):
        _run_dataset(two_datasets, tmp_path / "p", "other", "train")
    assert not (tmp_path / "p" / "other").exists()


def test_an_alias_that_is_not_a_class_of_the_dataset_is_one_line(two_datasets, tmp_path):
    with pytest.raises(AigiError) as err:
        _run_dataset(two_datasets, tmp_path / "p", "other", "test", class_aliases={"SD15": "FAKE"})
    assert str(err.value) == ("datasets.other.class_aliases: SD15 is not a class of other (classes: REAL, GAN, SD14); "
                              "fix or remove it")


def test_aliases_may_merge_two_folders_into_one_class_of_the_training_dataset(two_datasets, tmp_path):
    from aigi.data.synthetic import write_synthetic

    raw = tmp_path / "merged"
    write_synthetic(raw / "m" / "images", 20, 6, seed=0, generators=["SD14", "SD15"])
    m = _run_dataset(raw, tmp_path / "p", "m", "train", class_aliases={"SD14": "SD", "SD15": "SD"})
    assert m["classes"] == ["REAL", "SD"] and m["splits"]["test"]["per_class"] == {"REAL": 6, "SD": 12}
