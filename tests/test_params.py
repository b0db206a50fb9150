import pytest
import yaml
from conftest import ROOT

from aigi import params
from aigi.errors import AigiError


def test_project_params_load_and_defaults_run_the_real_experiment():
    p = params.load(ROOT / "params.yaml")
    assert p.train_on == "cifake" and list(p.datasets) == ["cifake"] and p.evaluate.test_on == []
    assert p.training_dataset.source == "kaggle" and p.training_dataset.class_aliases == {}
    assert (p.model.arch, p.model.pretrained) == ("ViT-B-32", "openai")
    assert (p.preprocess.train_per_class, p.preprocess.test_per_class) == (8000, 2000)
    assert p.finetune.method == "contrastive"
    assert set(p.zeroshot.prompts) == {"REAL", "FAKE"}


def test_params_yaml_spells_exactly_the_code_defaults():
    """Every default is written twice (params.py, params.yaml): they must agree, key for key, and the file
    must name every key (so params.yaml is the whole list of knobs)."""
    in_code = params.flatten(params.Params().model_dump())
    in_file = params.flatten(params.load(ROOT / "params.yaml").model_dump())
    differ = {k: (in_code.get(k), in_file.get(k)) for k in in_code.keys() | in_file.keys()
              if in_code.get(k) != in_file.get(k)}
    assert not differ, f"params.py default vs params.yaml: {differ}"
    written = params.flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert sorted(in_code.keys() - written.keys()) == [], "keys with a default in params.py but not in params.yaml"


def test_demo_overrides_are_valid():
    from aigi.demo import merge

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    demo = params.parse(merge(base, yaml.safe_load((ROOT / "params.demo.yaml").read_text())))
    assert (demo.training_dataset.source, demo.model.arch, demo.model.pretrained) == ("synthetic", "aigi-tiny", "none")
    assert list(demo.datasets) == ["cifake"]  # the demo's datasets replace params.yaml's


def test_flat_params_are_dotted():
    flat = params.Params().flat()
    assert flat["finetune.lr"] == 1e-5
    assert flat["datasets.cifake.source"] == "kaggle" and flat["train_on"] == "cifake"
    assert "zeroshot.prompts" in flat and "REAL" in flat["zeroshot.prompts"]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"finetune": {"lrr": 0.1}}, "finetune.lrr: unknown key"),
        ({"finetune": {"lr": "fast"}}, "finetune.lr: "),
        ({"finetune": {"lr": -1}}, "finetune.lr: Input should be greater than 0"),
        ({"finetune": {"method": "magic"}}, "finetune.method: Input should be 'contrastive', 'linear_probe' or 'full'"),
        ({"preprocess": {"train_per_class": "most"}}, "preprocess.train_per_class"),
        ({"preprocess": {"val_fraction": 1.5}}, "preprocess.val_fraction: Input should be less than 1"),
        ({"datasets": {"cifake": {"source": "local"}}}, "datasets.cifake: source 'local' needs path"),
        ({"model": {"device": "gpu"}}, "model.device: must be auto, cpu, cuda, cuda:N or mps"),
        ({"zeroshot": {"prompts": {"FAKE": ["x"]}}}, "zeroshot.prompts: needs a non-empty list of prompts for REAL"),
        ({"zeroshot": {"prompts": {"REAL": ["x"], "SD": []}}}, "zeroshot.prompts: needs a non-empty list of prompts "
         "for SD"),
        ({"zeroshot": {"generator_templates": ["made by a computer."]}}, "zeroshot.generator_templates: each template "
         "needs exactly one {name}"),
        ({"sed": 1}, "sed: unknown key"),
        ({"model": {"arch": "ViT-Z-99"}}, "model.arch: not a known model; use an open_clip name (e.g. "),
        ({"model": {"arch": "configs/nope.json"}}, "model.arch: no such model-config JSON file"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(raw, expected):
    with pytest.raises(AigiError) as err:
        params.parse(raw, "params.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("params.yaml: ")
    assert expected in msg


def test_all_is_accepted_for_per_class_sizes():
    p = params.parse({"preprocess": {"train_per_class": "all", "test_per_class": 10}})
    assert p.preprocess.train_per_class == "all"


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(AigiError, match="not found"):
        params.load(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("finetune: [unclosed\n")
    with pytest.raises(AigiError, match="not valid YAML at line"):
        params.load(bad)


def test_stage_prints_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    from aigi.errors import exits_cleanly

    (tmp_path / "params.yaml").write_text("finetune:\n  lr: -3\n")
    monkeypatch.chdir(tmp_path)

    @exits_cleanly
    def main():
        params.load()

    with pytest.raises(SystemExit) as code:
        main()
    assert code.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: params.yaml: finetune.lr")


@pytest.mark.parametrize("section, raw, message", [
    ("evaluate", {"unseen_generators": ["real"]}, "evaluate.unseen_generators: unseen_generators lists REAL"),
    ("evaluate", {"unseen_generators": ["a/b"]}, "evaluate.unseen_generators.0: String should match pattern"),
    ("datasets", {"cifake": {"synthetic_generators": ["GAN", "gan"]}},
     "datasets.cifake.synthetic_generators: synthetic_generators lists GAN more than once"),
    ("datasets", {"cifake": {"layout": "zip"}},
     "datasets.cifake.layout: Input should be 'auto', 'folder', 'genimage' or 'label_column'"),
    ("datasets", {"cifake": {"class_aliases": {"SD14": "a/b"}}},
     "datasets.cifake.class_aliases.SD14: String should match pattern"),
    ("datasets", {"cifake": {"class_aliases": {"nature": "REAL"}}},
     "datasets.cifake.class_aliases: REAL cannot be aliased"),
])
def test_class_params_fail_naming_the_key(section, raw, message):
    with pytest.raises(AigiError) as e:
        params.parse({section: raw})
    assert message in str(e.value)


@pytest.mark.parametrize("raw, message", [
    ({"train_on": "genimage"}, "train_on: 'genimage' is not a dataset in `datasets` (names: cifake)"),
    ({"evaluate": {"test_on": ["multigen"]}}, "evaluate.test_on: 'multigen' is not a dataset in `datasets`"),
    ({"evaluate": {"test_on": ["cifake"]}}, "evaluate.test_on: 'cifake' is train_on, whose test split is always"),
    ({"datasets": {"cifake": {}, "b": {}}, "evaluate": {"test_on": ["b", "b"]}}, "evaluate.test_on lists b more"),
    ({"datasets": {"CIFAKE": {}}, "train_on": "CIFAKE"}, "datasets.CIFAKE: dataset name 'CIFAKE': use lower-case"),
    ({"datasets": {"a/b": {}}}, "datasets.a/b: dataset name 'a/b'"),
])
def test_dataset_names_fail_at_load_naming_the_key(raw, message):
    with pytest.raises(AigiError) as e:
        params.parse(raw, "params.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_named_datasets_and_their_lookup():
    b = {"source": "local", "path": "x", "class_aliases": {"sd14": "fake"}}
    p = params.parse({"train_on": "a", "datasets": {"a": {"source": "synthetic"}, "b": b},
                      "evaluate": {"test_on": ["b"]}})
    assert p.training_dataset.source == "synthetic" and p.dataset("b").class_aliases == {"SD14": "FAKE"}
    with pytest.raises(AigiError, match=r"no dataset 'c' in params.yaml `datasets` \(names: a, b\)"):
        p.dataset("c")


def test_class_params_are_upper_case_like_the_data():
    p = params.parse({"datasets": {"cifake": {"display_names": {"sd14": "Stable Diffusion 1.4"},
                                              "synthetic_generators": ["gan"]}},
                      "evaluate": {"unseen_generators": ["Vae"]}})
    d = p.training_dataset
    assert d.display_names == {"SD14": "Stable Diffusion 1.4"} and d.synthetic_generators == ["GAN"]
    assert p.evaluate.unseen_generators == ["VAE"]


def test_multigen_sample_params_are_valid_and_name_the_small_vit():
    from aigi.demo import file_overrides, merge
    from aigi.model import input_size

    read = [yaml.safe_load((ROOT / name).read_text()) for name in ("params.yaml", "params.demo.yaml")]
    base = merge(*read)
    p = params.parse(merge(base, file_overrides(ROOT, ROOT / "params.multigen-sample.yaml")))
    d = p.training_dataset
    assert (p.train_on, list(p.datasets)) == ("multigen", ["multigen"])
    assert (d.source, p.finetune.method, p.finetune.epochs, p.finetune.batch_size) == ("local", "full", 6, 128)
    assert d.path.endswith("shared/data/multigen-sample/multigen-sample.zip")
    assert input_size(str(ROOT / p.model.arch)) == 32 and set(p.zeroshot.prompts) == {"REAL"}


def test_model_arch_is_checked_when_params_load(tmp_path):
    for ok in ("ViT-B-32", "ViT-L-14", "aigi-tiny", "aigi-vit-small32"):
        assert params.parse({"model": {"arch": ok}}).model.arch == ok
    with pytest.raises(AigiError) as err:
        params.parse({"model": {"arch": "ViT-Z-99"}}, "params.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("params.yaml: model.arch: not a known model")
    assert "ViT-B-32" in msg and "aigi-tiny" in msg and "model-config JSON" in msg and msg.endswith("(got 'ViT-Z-99')")
    # a config JSON: a relative path is read from the folder of params.yaml (the project root), where the stages run
    config = tmp_path / "configs" / "mine.json"
    config.parent.mkdir()
    config.write_text((ROOT / "src" / "aigi" / "model_configs" / "aigi-tiny.json").read_text())
    (tmp_path / "params.yaml").write_text("model:\n  arch: configs/mine.json\n")
    assert params.load(tmp_path / "params.yaml").model.arch == "configs/mine.json"
    config.write_text('{"embed_dim": 8}')
    with pytest.raises(AigiError, match=r"model.arch: .*not an open_clip model config \(it needs vision_cfg, text_cfg"):
        params.load(tmp_path / "params.yaml")
    config.unlink()
    with pytest.raises(AigiError, match=r"params.yaml: model.arch: no such model-config JSON file"):
        params.load(tmp_path / "params.yaml")


def test_model_arch_names_are_open_clips_without_importing_it():
    import subprocess
    import sys

    code = ("import sys; from aigi import params; params.parse({'model': {'arch': 'ViT-B-16'}}); "
            "assert 'open_clip' not in sys.modules and 'torch' not in sys.modules, 'imported'; "
            "print(sorted(params.known_archs()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # open_clip's own list, in a fresh interpreter too: tests in this one register configs of their own
    listed = ("import open_clip; import aigi.model; "  # aigi.model registers the packaged configs with open_clip
              "print(sorted(open_clip.list_models()))")
    models = subprocess.run([sys.executable, "-c", listed], capture_output=True, text=True, check=True).stdout
    assert eval(out) == eval(models)


def test_cross_demo_params_train_on_one_synthetic_dataset_and_test_on_another():
    from aigi.demo import file_overrides, merge

    read = [yaml.safe_load((ROOT / name).read_text()) for name in ("params.yaml", "params.demo.yaml")]
    p = params.parse(merge(merge(*read), file_overrides(ROOT, ROOT / "params.cross-demo.yaml")))
    other = p.dataset("other")
    assert (p.train_on, p.evaluate.test_on) == ("cifake", ["other"])
    assert other.source == p.training_dataset.source == "synthetic"
    assert other.synthetic_seed != p.seed and other.synthetic_train_per_class == 0
    assert other.class_aliases == {"SD14": "FAKE"} and other.synthetic_generators == ["SD14", "GAN"]
