import io
import json
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from aigi.data import sources
from aigi.data.synthetic import write_synthetic
from aigi.errors import AigiError
from aigi.params import DatasetParams


def _facts(capsys) -> dict[str, str]:
    """What the last download printed about its run (cache, note, downloaded): not in SOURCE.json."""
    lines = [ln.removeprefix("download: ") for ln in capsys.readouterr().out.splitlines()]
    return dict(ln.split(": ", 1) for ln in lines if ": " in ln)


def _download(tmp_path, **data):
    dest = tmp_path / "data" / "raw"
    info = sources.download(DatasetParams(**data), 7, dest)
    return dest, info


def test_synthetic_is_deterministic_and_in_cifake_layout(tmp_path):
    a, info = _download(tmp_path / "a", source="synthetic", synthetic_train_per_class=5, synthetic_test_per_class=3)
    b, _ = _download(tmp_path / "b", source="synthetic", synthetic_train_per_class=5, synthetic_test_per_class=3)
    assert info["counts"] == {"train/REAL": 5, "train/FAKE": 5, "test/REAL": 3, "test/FAKE": 3}
    assert (a / "SHA256SUMS").read_text() == (b / "SHA256SUMS").read_text()
    assert json.loads((a / "SOURCE.json").read_text())["source"] == "synthetic"
    assert not (tmp_path / "a" / "data" / "raw.partial").exists()


def test_synthetic_classes_differ_measurably(tmp_path):
    import numpy as np

    from aigi.data.images import load_rgb

    write_synthetic(tmp_path, 30, 1, seed=1)

    def checker_energy(label):
        vals = []
        for f in (tmp_path / "train" / label).iterdir():
            x = load_rgb(f).astype(float).mean(axis=2)
            vals.append(np.abs(np.diff(x, axis=0)).mean())
        return np.mean(vals)

    assert checker_energy("FAKE") > 2 * checker_energy("REAL")


def _cifake_zip(tree: Path, zpath: Path) -> Path:
    """`tree` as a zip with the layout at its top level."""
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(tree.rglob("*")):
            zf.write(f, f.relative_to(tree))
    return zpath


def _cifake_tree(root: Path, upper=True) -> Path:
    write_synthetic(root, 3, 2, seed=0)
    if not upper:  # lower-case class folders must work too
        for split in ("train", "test"):
            for label in ("REAL", "FAKE"):
                (root / split / label).rename(root / split / label.lower())
    (root / "train" / ("REAL" if upper else "real") / "notes.txt").write_text("not an image")
    return root


def test_local_folder_case_insensitive_and_non_images_ignored(tmp_path):
    tree = _cifake_tree(tmp_path / "src" / "nested", upper=False)
    dest, info = _download(tmp_path, source="local", path=str(tree.parent))
    assert info["counts"]["train/REAL"] == 3 and info["counts"]["test/FAKE"] == 2
    assert info["ignored_non_image_files"] == 1
    assert (dest / "images" / "train" / "REAL").is_dir()


def test_local_zip_and_tar(tmp_path):
    tree = _cifake_tree(tmp_path / "tree")
    zpath = tmp_path / "cifake.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in tree.rglob("*"):
            zf.write(f, Path("cifake") / f.relative_to(tree))
    _, info = _download(tmp_path / "z", source="local", path=str(zpath))
    assert info["counts"]["train/FAKE"] == 3 and len(info["archive_sha256"]) == 64
    tpath = tmp_path / "cifake.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        tf.add(tree, arcname="cifake")
    _, info = _download(tmp_path / "t", source="local", path=str(tpath))
    assert info["counts"]["test/REAL"] == 2


def test_wrong_layout_lists_what_was_found(tmp_path):
    (tmp_path / "src" / "images" / "cats").mkdir(parents=True)
    with pytest.raises(AigiError, match=r"no dataset layout found .* found: images/, images/cats/"):
        _download(tmp_path, source="local", path=str(tmp_path / "src"))
    assert not (tmp_path / "data" / "raw").exists() and not (tmp_path / "data" / "raw.partial").exists()


def test_missing_local_path(tmp_path):
    with pytest.raises(AigiError, match="does not exist"):
        _download(tmp_path, source="local", path=str(tmp_path / "nope"))


def _zip_with(tmp_path, name, data=b"x", mode=None):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cifake/ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


def _tar_with(tmp_path, member: tarfile.TarInfo, data=b""):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("cifake/ok.txt")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))
        member.size = len(data) if member.type == tarfile.REGTYPE else 0
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def _tar_member(name, type_=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/path.txt", "a/../../escape.txt"])
def test_archive_members_escaping_are_refused(tmp_path, name):
    for archive in (_zip_with(tmp_path, name), _tar_with(tmp_path, _tar_member(name), b"evil")):
        out = tmp_path / "out"
        with pytest.raises(AigiError, match=rf"refusing member '{re.escape(name)}': its path escapes the extraction"):
            sources.extract_archive(archive, out, 10**9, 10**6)
        assert not (tmp_path / "escape.txt").exists() and not Path("/abs/path.txt").exists()
        # a zip is checked whole before anything is written
        assert archive.suffix == ".tar" or not (out / "cifake" / "ok.txt").exists()


@pytest.mark.parametrize("mode, what", [(0o120777, "a symbolic link"), (0o020666, "a character device"),
                                        (0o060666, "a block device"), (0o010666, "a fifo")])
def test_zip_links_and_special_files_refused(tmp_path, mode, what):
    archive = _zip_with(tmp_path, "cifake/odd", b"/etc/passwd", mode=mode)
    with pytest.raises(AigiError, match=f"refusing member 'cifake/odd': it is {what}, not a regular file"):
        sources.extract_archive(archive, tmp_path / "out", 10**9, 10**6)
    assert not (tmp_path / "out" / "cifake").exists()


@pytest.mark.parametrize("type_, what", [(tarfile.SYMTYPE, "a symbolic link"), (tarfile.LNKTYPE, "a hard link"),
                                         (tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device"),
                                         (tarfile.FIFOTYPE, "a fifo")])
def test_tar_links_and_special_files_refused(tmp_path, type_, what):
    archive = _tar_with(tmp_path, _tar_member("cifake/odd", type_, linkname="/etc/passwd"))
    with pytest.raises(AigiError, match=f"refusing member 'cifake/odd': it is {what}, not a regular file"):
        sources.extract_archive(archive, tmp_path / "out", 10**9, 10**6)
    assert not (tmp_path / "out" / "cifake" / "odd").exists()


def test_hostile_archive_leaves_nothing_behind(tmp_path):
    archive = _tar_with(tmp_path, _tar_member("cifake/train/REAL/x.jpg", tarfile.SYMTYPE, "/etc/passwd"))
    with pytest.raises(AigiError, match="symbolic link"):
        _download(tmp_path, source="local", path=str(archive))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


def test_archive_bombs_refused_before_extraction_completes(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", b"\0" * 5_000_000)
    with pytest.raises(AigiError, match=r"bomb.zip: expands to over 1,000,000 bytes; raise "
                                             r"datasets.<name>.max_archive_bytes"):
        sources.extract_archive(path, tmp_path / "o", 1_000_000, 10**6)
    assert not (tmp_path / "o" / "big.bin").exists()  # refused from the member list, before writing
    with pytest.raises(AigiError, match=r"over 1 members; raise datasets.<name>.max_archive_members"):
        many = tmp_path / "many.zip"
        with zipfile.ZipFile(many, "w") as zf:
            zf.writestr("a", b"1")
            zf.writestr("b", b"2")
        sources.extract_archive(many, tmp_path / "o3", 10**9, 1)
    # a tar is a stream: the limit stops it at the member that crosses it
    tpath = tmp_path / "bomb.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        for name in ("a.bin", "b.bin", "c.bin"):
            info = tarfile.TarInfo(name)
            info.size = 600_000
            tf.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(AigiError, match=r"bomb.tar.gz: expands to over 1,000,000 bytes"):
        sources.extract_archive(tpath, tmp_path / "t", 1_000_000, 10**6)
    assert (tmp_path / "t" / "a.bin").exists() and not (tmp_path / "t" / "b.bin").exists()
    with pytest.raises(AigiError, match=r"bomb.tar.gz: over 2 members"):
        sources.extract_archive(tpath, tmp_path / "t2", 10**9, 2, max_ratio=10**4)  # zeros: over the default ratio
    assert not (tmp_path / "t2" / "c.bin").exists()


def test_corrupt_archive(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(AigiError):
        _download(tmp_path, source="local", path=str(path))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, as on a machine without network."""
    import socket

    def refuse(*a, **k):
        raise OSError(101, "Network is unreachable (blocked in tests)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _fake_kagglehub_cache(root: Path, monkeypatch, handle: str, version: int) -> Path:
    """A kagglehub cache (KAGGLEHUB_CACHE) holding a complete copy of `handle` at `version`."""
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_dataset_handle

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(root))
    h = parse_dataset_handle(handle).with_version(version)
    folder = Path(Cache().get_path(h))
    _cifake_tree(folder / "cifake", upper=False)  # the Kaggle zip nests one folder deep, lower-case allowed
    Cache().mark_as_complete(h)
    return folder


def test_kaggle_pinned_version_comes_from_the_cache_without_network(tmp_path, monkeypatch, no_network, capsys):
    handle = "birdy654/cifake-real-and-ai-generated-synthetic-images"
    folder = _fake_kagglehub_cache(tmp_path / "kagglehub", monkeypatch, handle, 3)
    _, info = _download(tmp_path, source="kaggle", kaggle_dataset=f"{handle}/versions/3")
    facts = _facts(capsys)
    assert info["counts"]["train/REAL"] == 3 and info["version"] == "3" and facts["cache"] == str(folder)
    assert "note" not in facts and "cache" not in info


def test_kaggle_unpinned_offline_falls_back_to_the_newest_cached_copy(tmp_path, monkeypatch, no_network, capsys):
    handle = "birdy654/cifake-real-and-ai-generated-synthetic-images"
    _fake_kagglehub_cache(tmp_path / "kagglehub", monkeypatch, handle, 2)
    newest = _fake_kagglehub_cache(tmp_path / "kagglehub", monkeypatch, handle, 3)
    (newest.parent / "4").mkdir()  # an incomplete download (no completion marker) is not used
    _, info = _download(tmp_path, source="kaggle")
    assert info["version"] == "3" and _facts(capsys)["note"].startswith("offline (")
    assert info["counts"] == {"train/REAL": 3, "train/FAKE": 3, "test/REAL": 2, "test/FAKE": 2}


def test_kaggle_offline_without_cache_is_one_line(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(AigiError, match=r"^datasets.<name>.source 'kaggle': could not download "
                                         r".*datasets.<name>.source: local") as err:
        _download(tmp_path, source="kaggle")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "data" / "raw").exists() and not (tmp_path / "data" / "raw.partial").exists()


def test_huggingface_snapshot_folder_and_offline(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = _cifake_tree(tmp_path / "hub" / "snapshots" / "abc123")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, repo_type: calls.append((repo_id, repo_type)) or str(snapshot))
    _, info = _download(tmp_path / "a", source="huggingface", huggingface_dataset="someone/cifake")
    assert calls == [("someone/cifake", "dataset")]
    assert info["version"] == "abc123" and info["counts"]["test/FAKE"] == 2

    def offline(**k):
        raise ConnectionError("Max retries exceeded\n[Errno 101] Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(AigiError, match=r"datasets.<name>.source 'huggingface': could not download "
                                         r"someone/cifake .*local"):
        _download(tmp_path / "b", source="huggingface", huggingface_dataset="someone/cifake")
    assert not (tmp_path / "b" / "data" / "raw").exists()


def test_url_is_downloaded_once_then_served_from_the_cache(tmp_path, monkeypatch, capsys):
    zpath = _cifake_zip(_cifake_tree(tmp_path / "tree"), tmp_path / "cifake.zip")
    monkeypatch.setattr(sources, "CACHE", tmp_path / "cache")
    opened = []
    real_urlopen = sources.urllib.request.urlopen
    monkeypatch.setattr(sources.urllib.request, "urlopen",
                        lambda url, **k: opened.append(url) or real_urlopen(url, **k))
    url, digest = "file://" + str(zpath), sources.sha256_file(zpath)
    runs = []
    for where, expected in (("a", digest), ("b", digest), ("c", None)):  # c: no expected hash, cache used
        _, info = _download(tmp_path / where, source="url", url=url, sha256=expected)
        runs.append((info, _facts(capsys)))
    assert opened == [url] and [f["downloaded"] for _, f in runs] == ["True", "False", "False"]
    assert runs[0][0] == runs[1][0] == runs[2][0]  # SOURCE.json is the same whether downloaded or cached
    # a cached copy that no longer matches the expected hash is fetched again
    Path(runs[0][1]["cache"]).write_bytes(b"corrupted")
    _download(tmp_path / "d", source="url", url=url, sha256=digest)
    assert _facts(capsys)["downloaded"] == "True" and len(opened) == 2


def test_url_source_verifies_sha256_and_caches(tmp_path, monkeypatch):
    zpath = _cifake_zip(_cifake_tree(tmp_path / "tree"), tmp_path / "cifake.zip")
    monkeypatch.setattr(sources, "CACHE", tmp_path / "cache")
    url = zpath.as_uri()
    _, info = _download(tmp_path / "a", source="url", url=url, sha256=sources.sha256_file(zpath))
    assert info["counts"]["test/FAKE"] == 2
    with pytest.raises(AigiError, match="SHA-256 mismatch"):
        _download(tmp_path / "b", source="url", url=url, sha256="0" * 64)
    with pytest.raises(AigiError, match="could not download"):
        _download(tmp_path / "c", source="url", url=(tmp_path / "missing.zip").as_uri())


def test_parquet_from_huggingface_layout(tmp_path):
    import pandas as pd

    tree = _cifake_tree(tmp_path / "tree")
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    for split in ("train", "test"):
        rows = [{"image": {"bytes": f.read_bytes(), "path": f.name}, "label": int(label == "REAL")}
                for label in ("REAL", "FAKE") for f in sorted((tree / split / label).glob("*.png"))]
        pd.DataFrame(rows).to_parquet(hub / "data" / f"{split}-00000.parquet")
    (hub / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n"
        "    dtype:\n      class_label:\n        names:\n          '0': FAKE\n          '1': REAL\n---\n# card\n"
    )
    out = tmp_path / "out"
    sources.import_parquet(hub, out)
    assert len(list((out / "train" / "REAL").iterdir())) == 3
    assert len(list((out / "test" / "FAKE").iterdir())) == 2


def test_source_json_is_the_same_for_the_same_data_anywhere(tmp_path):
    tree = _cifake_tree(tmp_path / "tree")
    for where in ("here", "there"):
        (tmp_path / where).mkdir()
        _cifake_zip(tree, tmp_path / where / "cifake.zip")
    a, _ = _download(tmp_path / "a", source="local", path=str(tmp_path / "here" / "cifake.zip"))
    b, _ = _download(tmp_path / "b", source="local", path=str(tmp_path / "there" / "cifake.zip"))
    # identical bytes: DVC sees the same data/raw and re-runs nothing downstream
    assert (a / "SOURCE.json").read_bytes() == (b / "SOURCE.json").read_bytes()


# ---------------------------------------------------------------- N classes and layouts


def _classes_on_disk(raw: Path) -> dict[str, list[str]]:
    return {split: sorted(c.name for c in (raw / "images" / split).iterdir()) for split in ("train", "test")}


def test_folder_layout_with_generators_and_a_named_real_class(tmp_path):
    from conftest import write_images

    src = tmp_path / "src" / "mydata"
    for split, n in (("train", 3), ("test", 2)):
        write_images(src / split / "photos", n, seed=0 if split == "train" else 1)
        write_images(src / split / "midjourney", n, fmt="jpg", seed=2)
        write_images(src / split / "SD14", n, seed=3)
    dest, info = _download(tmp_path, source="local", path=str(src.parent), real_class="Photos",
                           display_names={"sd14": "Stable Diffusion 1.4"})
    assert info["classes"] == ["REAL", "MIDJOURNEY", "SD14"] and info["layout"] == "folder"
    assert info["display_names"] == {"REAL": "REAL", "MIDJOURNEY": "MIDJOURNEY", "SD14": "Stable Diffusion 1.4"}
    assert info["counts"]["test/MIDJOURNEY"] == 2
    assert sorted(p.name for p in (dest / "images" / "train" / "MIDJOURNEY").iterdir()) == [
        "0000.jpg", "0001.jpg", "0002.jpg"]  # original names kept
    assert json.loads((dest / "SOURCE.json").read_text())["classes"] == info["classes"]
    assert any(line.endswith("  images/test/SD14/0001.png") for line in (dest / "SHA256SUMS").read_text().splitlines())


def test_genimage_layout_pools_nature_as_real_and_val_is_test(tmp_path):
    from conftest import write_images

    root = tmp_path / "GenImage"
    for k, gen in enumerate(("ADM", "BigGAN", "stable_diffusion_v_1_4")):
        sub = root / gen / f"imagenet_{gen.lower()}"  # GenImage nests one more folder per generator
        write_images(sub / "train" / "ai", 3, seed=10 * k)
        write_images(sub / "train" / "nature", 2, seed=10 * k + 1)  # same names across generators: both kept
        write_images(sub / "val" / "ai", 2, seed=10 * k + 2)
        write_images(sub / "val" / "nature", 1, seed=10 * k + 3)
    zpath = _cifake_zip(tmp_path, tmp_path.parent / "genimage.zip")
    dest, info = _download(tmp_path / "out", source="local", path=str(zpath))
    assert info["layout"] == "genimage"
    assert info["classes"] == ["REAL", "ADM", "BIGGAN", "STABLE_DIFFUSION_V_1_4"]
    assert info["counts"] == {"train/REAL": 6, "train/ADM": 3, "train/BIGGAN": 3, "train/STABLE_DIFFUSION_V_1_4": 3,
                              "test/REAL": 3, "test/ADM": 2, "test/BIGGAN": 2, "test/STABLE_DIFFUSION_V_1_4": 2}
    names = sorted(p.name for p in (dest / "images" / "train" / "REAL").iterdir())
    assert names[:2] == ["0000.png", "0001.png"] and "BIGGAN__0000.png" in names


def test_parquet_with_a_named_label_column_and_real_values(tmp_path):
    import pandas as pd
    from conftest import write_images

    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        rows = []
        for gen in ("real", "Flux.1 dev", "sdxl"):
            for f in write_images(tmp_path / "img" / split / gen, 2, seed=hash(split + gen) % 1000):
                rows.append({"image": {"bytes": f.read_bytes(), "path": f"{gen}-{f.name}"}, "generator": gen,
                             "label": 0})
        pd.DataFrame(rows).to_parquet(hub / "data" / f"{split}-00000-of-00001.parquet")
    dest, info = _download(tmp_path / "a", source="local", path=str(hub), label_column="generator")
    assert info["layout"] == "label_column" and info["classes"] == ["REAL", "FLUX.1_DEV", "SDXL"]
    assert info["counts"]["test/SDXL"] == 2  # `validation` is the test split when there is no test shard
    assert (dest / "images" / "train" / "FLUX.1_DEV" / "Flux.1 dev-0000.png").is_file()
    with pytest.raises(AigiError, match=r"no label column 'model' \(columns found: image, generator, label\); "
                                        r"set datasets.<name>.label_column"):
        _download(tmp_path / "b", source="local", path=str(hub), label_column="model")
    with pytest.raises(AigiError, match=r"no REAL class \(classes found: FLUX.1_DEV, REAL_PHOTO, SDXL\)"):
        hub2 = tmp_path / "hub2"
        shutil.copytree(hub, hub2)
        for shard in hub2.rglob("*.parquet"):
            df = pd.read_parquet(shard)
            df["generator"] = df["generator"].replace("real", "real photo")
            df.to_parquet(shard)
        _download(tmp_path / "c", source="local", path=str(hub2), label_column="generator")


def test_layout_errors_are_one_line(tmp_path):
    from conftest import write_images

    src = tmp_path / "src"
    write_images(src / "train" / "REAL", 2)
    write_images(src / "train" / "GAN", 2)
    write_images(src / "test" / "REAL", 2, seed=1)
    with pytest.raises(AigiError, match=r"no test images for class GAN; check the source's layout"):
        _download(tmp_path / "a", source="local", path=str(src))
    write_images(src / "test" / "GAN", 2, seed=2)
    (src / "train" / "VAE").mkdir()
    (src / "test" / "VAE").mkdir()
    (src / "test" / "VAE" / "notes.txt").write_text("x")
    with pytest.raises(AigiError, match=r"no test images for class VAE"):
        _download(tmp_path / "b", source="local", path=str(src))
    write_images(src / "test" / "VAE", 1, seed=3)
    with pytest.raises(AigiError, match=r"generator folder train/VAE is empty; fill or remove it"):
        _download(tmp_path / "c", source="local", path=str(src))
    shutil.rmtree(src / "train" / "VAE")
    shutil.rmtree(src / "test" / "VAE")
    with pytest.raises(AigiError, match=r"class 'REAL' is named like the real class but the real images are nature"):
        _download(tmp_path / "d", source="local", path=str(src), real_class="nature")
    for split in ("train", "test"):
        (src / split / "REAL").rename(src / split / "photos")
    with pytest.raises(AigiError, match=r"no REAL class \(classes found: GAN, PHOTOS\); "
                                         r"set datasets.<name>.real_class"):
        _download(tmp_path / "e", source="local", path=str(src))
    assert not (tmp_path / "e" / "data" / "raw").exists()


def test_synthetic_generators_have_distinct_learnable_fingerprints(tmp_path):
    import numpy as np

    from aigi.data.images import load_rgb

    gens = ["FAKE", "GAN", "VAE", "DIFF"]
    dest, info = _download(tmp_path, source="synthetic", synthetic_train_per_class=30, synthetic_test_per_class=20,
                           synthetic_generators=gens)
    assert info["classes"] == ["REAL", "DIFF", "FAKE", "GAN", "VAE"]

    def features(split, label):
        """Per image: the high-passed row profile (stripes, with their phase), colour cast and saturation."""
        out = []
        for f in sorted((dest / "images" / split / label).iterdir()):
            x = load_rgb(f).astype(float)
            rows = x.mean(axis=(1, 2))
            stripes = rows - np.convolve(np.pad(rows, 3, mode="edge"), np.ones(7) / 7, mode="valid")
            sat = (x - x.mean(axis=2, keepdims=True)).std()
            out.append(np.concatenate([stripes / 4, (x.mean(axis=(0, 1)) - x.mean()) / 10, [sat / 20]]))
        return np.array(out)

    centroids = {c: features("train", c).mean(axis=0) for c in info["classes"]}
    test = {c: features("test", c) for c in info["classes"]}
    # nearest train centroid on these hand features tells held-out images' class apart: distinct, learnable
    correct = sum(min(centroids, key=lambda k: np.linalg.norm(v - centroids[k])) == c
                  for c, f in test.items() for v in f)
    assert correct / sum(len(f) for f in test.values()) > 0.85
    # the fingerprints survive horizontal flips: row profiles do not change
    img = load_rgb(next((dest / "images" / "train" / "GAN").iterdir()))
    assert np.allclose(img.mean(axis=(1, 2)), img[:, ::-1].mean(axis=(1, 2)))


def test_multigen_sample_gives_four_classes_with_provenance_counts(tmp_path):
    from conftest import MULTIGEN_SAMPLE

    from aigi.data import preprocess
    from aigi.params import PreprocessParams

    if not MULTIGEN_SAMPLE.is_file():
        pytest.skip(f"{MULTIGEN_SAMPLE} not present")
    dest, info = _download(tmp_path, source="local", path=str(MULTIGEN_SAMPLE))
    assert info["classes"] == ["REAL", "DCGAN", "SD14", "VAE"]
    assert info["counts"] == {f"{s}/{c}": n for s, n in (("train", 2000), ("test", 1000))
                              for c in ("REAL", "DCGAN", "SD14", "VAE")}
    m = preprocess.run(dest / "images", tmp_path / "processed", PreprocessParams(
        train_per_class="all", test_per_class="all", workers=2), seed=0, image_size=32)
    assert m["classes"] == ["REAL", "DCGAN", "SD14", "VAE"]
    assert m["found"] == info["counts"]
    assert m["splits"]["test"]["per_class"] == {c: 1000 for c in m["classes"]}
    assert m["splits"]["train"]["count"] + m["splits"]["val"]["count"] == 8000
    assert {c: v["top"] for c, v in m["original_sizes"].items()} == {c: {"32x32": 3000} for c in m["classes"]}


def test_image_folders_with_a_metadata_label_column(tmp_path):
    from conftest import write_images

    hub = tmp_path / "hub"
    for k, split in enumerate(("train", "test")):
        rows = []
        for j, model in enumerate(("real", "dalle3", "sd21")):
            for f in write_images(hub / split / model, 2, seed=10 * k + j):
                rows.append(f"{model}/{f.name},{model}")
        (hub / split / "metadata.csv").write_text("file_name,model\n" + "\n".join(rows) + "\n")
    dest, info = _download(tmp_path / "a", source="local", path=str(hub), label_column="model")
    assert info["layout"] == "label_column" and info["classes"] == ["REAL", "DALLE3", "SD21"]
    assert info["counts"]["test/DALLE3"] == 2 and (dest / "images" / "train" / "SD21" / "0001.png").is_file()
    with pytest.raises(AigiError, match=r"test/metadata.csv: no label column 'generator' \(columns found: "
                                        r"file_name, model\)"):
        _download(tmp_path / "b", source="local", path=str(hub), label_column="generator")


# ---------------------------------------------------------------- hostile inputs (issue 16)


def _hub_with_rows(root: Path, images_dir: Path, extra: list) -> Path:
    """A parquet dataset: train and test shards of good rows (REAL and FAKE), plus `extra` rows in the train shard."""
    import pandas as pd
    from conftest import write_images

    (root / "data").mkdir(parents=True)
    for k, split in enumerate(("train", "test")):
        rows = [{"image": {"bytes": f.read_bytes(), "path": f"{label}-{f.name}"}, "label": label}
                for j, label in enumerate(("REAL", "FAKE"))
                for f in write_images(images_dir / split / label, 2, seed=10 * k + j)]
        if split == "train":
            rows += extra
        pd.DataFrame(rows).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_a_parquet_file_that_is_not_parquet_is_one_line_naming_the_shard(tmp_path):
    hub = _hub_with_rows(tmp_path / "hub", tmp_path / "img", [])
    (hub / "data" / "test-00000-of-00001.parquet").write_bytes(b"oops")  # an HTML error page, a truncated copy...
    with pytest.raises(AigiError) as err:
        _download(tmp_path / "a", source="local", path=str(hub))
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert re.search(r"hub/data/test-00000-of-00001.parquet: not a readable parquet file \(.*\); "
                     r"download it again or remove it", msg), msg
    assert not (tmp_path / "a" / "data" / "raw").exists()


def test_parquet_rows_without_an_image_are_skipped_and_listed_or_fail(tmp_path):
    from aigi.data import preprocess
    from aigi.params import PreprocessParams

    extra = [{"image": None, "label": "FAKE"},
             {"image": {"bytes": None, "path": "lost.png"}, "label": "FAKE"},
             {"image": {"bytes": b"not an image", "path": None}, "label": "FAKE"},
             {"image": {"bytes": b"\x89PNG unlabelled", "path": "x.png"}, "label": None}]
    hub = _hub_with_rows(tmp_path / "hub", tmp_path / "img", extra)
    dest, info = _download(tmp_path / "a", source="local", path=str(hub))
    shard = "data/train-00000-of-00001.parquet"
    assert info["skipped_rows"] == [{"shard": shard, "row": 4, "reason": "image cell is null"},
                                    {"shard": shard, "row": 5, "reason": "image cell is null"},
                                    {"shard": shard, "row": 7, "reason": "label cell is null"}]
    assert info["counts"]["train/FAKE"] == 3  # the undecodable bytes are a file, judged by preprocess like any other
    assert json.loads((dest / "SOURCE.json").read_text())["skipped_rows"] == info["skipped_rows"]
    pp = PreprocessParams(train_per_class="all", test_per_class="all", val_fraction=0.3, workers=1)
    m = preprocess.run(dest / "images", tmp_path / "processed", pp, seed=0, image_size=16)
    assert {"file": shard, "row": 4, "reason": "image cell is null"} in m["skipped"]
    assert {"file": shard, "row": 5, "reason": "image cell is null"} in m["skipped"]
    bad = [s for s in m["skipped"] if "row" not in s]
    assert [s["file"] for s in bad] == ["train/FAKE/train-00000-of-00001-000006.png"]  # shard and row in its name
    with pytest.raises(AigiError, match=rf"^{shard} row 4: image cell is null; fix or remove it, or set "
                                        r"preprocess.on_bad_image: skip$"):
        preprocess.run(dest / "images", tmp_path / "processed2", pp.model_copy(update={"on_bad_image": "fail"}),
                       seed=0, image_size=16)
    assert not (tmp_path / "processed2").exists()


def test_genimage_generator_with_nature_but_no_ai_images_is_one_line(tmp_path):
    from conftest import write_images

    root = tmp_path / "GenImage"
    for k, gen in enumerate(("ADM", "BigGAN")):
        write_images(root / gen / "train" / "nature", 2, seed=10 * k)
        write_images(root / gen / "val" / "nature", 1, seed=10 * k + 1)
        if gen == "ADM":
            write_images(root / gen / "train" / "ai", 2, seed=10 * k + 2)
            write_images(root / gen / "val" / "ai", 1, seed=10 * k + 3)
    with pytest.raises(AigiError, match=r"GenImage generator BigGAN has nature/ but no ai/ images; "
                                        r"add its ai/ images or remove the BigGAN/ folder"):
        _download(tmp_path / "a", source="local", path=str(root))
    assert not (tmp_path / "a" / "data" / "raw").exists()


def test_zip_member_that_expands_far_beyond_its_compressed_size_is_refused_before_writing(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cifake/ok.txt", b"fine")
        zf.writestr("cifake/zeros.png", b"\0" * 20_000_000)  # ~20 KB compressed: ratio ~1000
    assert path.stat().st_size < 100_000
    out = tmp_path / "o"
    with pytest.raises(AigiError, match=r"^bomb.zip: refusing member 'cifake/zeros.png': it expands 20,000,000 bytes "
                                        r"from [\d,]+ \(ratio \d+ > 100\), a decompression bomb's shape; "
                                        r"raise datasets.<name>.max_compression_ratio if expected$"):
        sources.extract_archive(path, out, 10**12, 10**6, max_ratio=100)
    assert not out.exists() or not any(out.rglob("*.*"))  # refused from the member list, nothing written
    # through the download stage: the param in the dataset section, nothing left behind
    with pytest.raises(AigiError, match=r"raise datasets\.<name>\.max_compression_ratio"):
        _download(tmp_path / "d", source="local", path=str(path))
    assert sorted(p.name for p in (tmp_path / "d" / "data").iterdir()) == []
    # a tar.gz compresses as one stream: the archive's own ratio, checked before the member is written
    tpath = tmp_path / "bomb.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        info = tarfile.TarInfo("cifake/zeros.png")
        info.size = 20_000_000
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(AigiError, match=r"^bomb.tar.gz: expands 20,000,000 bytes from [\d,]+ \(ratio \d+ > 100\)"):
        sources.extract_archive(tpath, tmp_path / "t", 10**12, 10**6, max_ratio=100)
    assert not (tmp_path / "t" / "cifake" / "zeros.png").exists()
    # a higher ratio lets it through (images barely compress; the guard is for the shape of a bomb)
    sources.extract_archive(path, tmp_path / "ok", 10**12, 10**6, max_ratio=2000)
    assert (tmp_path / "ok" / "cifake" / "zeros.png").stat().st_size == 20_000_000


def test_zip_member_whose_header_understates_its_size_is_not_written_past_it(tmp_path):
    """Declared sizes can lie: the bytes written are counted, and a member is never written past what it declared."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 5_000_000)
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # central directory entry: uncompressed size at +24, local header's at +22
    data[cd + 24: cd + 28] = (1000).to_bytes(4, "little")
    data[30 - 8: 30 - 4] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(AigiError, match=r"^liar.zip: "):
        sources.extract_archive(path, tmp_path / "o", 10**12, 10**6, max_ratio=100)
    written = tmp_path / "o" / "zeros.bin"
    assert not written.exists() or written.stat().st_size <= 1000


def test_zip_member_whose_header_overstates_its_compressed_size_is_still_refused(tmp_path):
    """A member cannot have more compressed bytes than the archive holds: the ratio is taken against that."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 5_000_000)
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # central directory entry: compressed size at +20
    data[cd + 20: cd + 24] = (50_000_000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(AigiError, match=r"^liar.zip: refusing member 'zeros.bin': it expands 5,000,000 bytes from "
                                        r"[\d,]+ \(ratio \d+ > 100\)"):
        sources.extract_archive(path, tmp_path / "o", 10**12, 10**6, max_ratio=100)
    assert not (tmp_path / "o" / "zeros.bin").exists()


def test_errors_inside_an_archive_name_the_archive_and_the_path_in_it(tmp_path):
    from conftest import write_images

    nothing = tmp_path / "nothing"
    write_images(nothing / "images" / "cats", 1)
    with pytest.raises(AigiError) as err:
        _download(tmp_path / "a", source="local", path=str(_cifake_zip(nothing, tmp_path / "cifake.zip")))
    assert str(err.value).startswith("cifake.zip: no dataset layout found") and "tmp" not in str(err.value)
    clash = tmp_path / "clash"
    for split in ("train", "test"):
        for label in ("REAL", "SD14"):
            write_images(clash / split / label, 1)
    write_images(clash / "train" / "sd14", 1)
    with pytest.raises(AigiError, match=r"^cifake2.zip:train/: SD14 and sd14 are both class SD14; "
                                        r"merge or rename one$"):
        _download(tmp_path / "b", source="local", path=str(_cifake_zip(clash, tmp_path / "cifake2.zip")))
    hub = _hub_with_rows(tmp_path / "hub", tmp_path / "img", [])
    (hub / "data" / "test-00000-of-00001.parquet").write_bytes(b"oops")
    with pytest.raises(AigiError, match=r"^hub.zip:data/test-00000-of-00001.parquet: not a readable parquet file"):
        _download(tmp_path / "c", source="local", path=str(_cifake_zip(hub, tmp_path / "hub.zip")))
    # outside an archive, the user's own folder is named as it is
    with pytest.raises(AigiError, match=rf"^{re.escape(str(clash / 'train'))}: SD14 and sd14 are both class SD14"):
        _download(tmp_path / "d", source="local", path=str(clash))


# ---------------------------------------------------------------- test-only datasets (issue 14)


def test_class_folders_without_splits_are_a_test_only_dataset(tmp_path):
    write_synthetic(tmp_path / "tree", 1, 3, seed=0, generators=["SD14", "GAN"])
    flat = tmp_path / "src" / "testset"
    shutil.copytree(tmp_path / "tree" / "test", flat)  # REAL/, SD14/, GAN/ with no train/ or test/ above
    (flat / "REAL").rename(flat / "real")
    dest, info = _download(tmp_path, source="local", path=str(flat.parent))
    assert info["counts"] == {"test/REAL": 3, "test/GAN": 3, "test/SD14": 3}
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["test"]
    assert len((dest / "SHA256SUMS").read_text().splitlines()) == 9


def test_synthetic_test_only_dataset_with_its_own_seed(tmp_path):
    kw = {"source": "synthetic", "synthetic_test_per_class": 2}
    a, info = _download(tmp_path / "a", synthetic_train_per_class=0, synthetic_seed=1, **kw)
    b, _ = _download(tmp_path / "b", synthetic_train_per_class=0, **kw)  # the global seed
    assert info["counts"] == {"test/REAL": 2, "test/FAKE": 2} and info["version"] == "seed=1"
    assert (a / "SHA256SUMS").read_text() != (b / "SHA256SUMS").read_text()


def test_a_dataset_with_train_alone_is_one_line(tmp_path):
    write_synthetic(tmp_path / "src" / "d", 2, 1, seed=0)
    shutil.rmtree(tmp_path / "src" / "d" / "test")
    (tmp_path / "src" / "d" / "test").mkdir()  # an empty test/: the layout is found, the split is empty
    with pytest.raises(AigiError, match=r"the dataset has no test split \(only train/\)"):
        _download(tmp_path, source="local", path=str(tmp_path / "src"))
    assert not (tmp_path / "data" / "raw").exists() and not (tmp_path / "data" / "raw.partial").exists()
