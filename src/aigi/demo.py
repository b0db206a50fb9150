"""`aigi demo`: the whole pipeline offline, in a copy of the project, on synthetic data and the tiny CLIP.

The copy (default `demo/`, git-ignored) gets the project's tracked files, `params.yaml` with
`params.demo.yaml` merged over it, and its own git repository, then runs `dvc repro`. The user's
`params.yaml`, and so what `make repro` runs, is untouched; the demo's MLflow runs land in the
user's store (experiment `aigi-demo`), next to the real ones: the copy's params name that store by
its absolute URI, so a later `dvc repro` or `dvc exp run` inside the copy tracks there too.

`--generators A,B,C` makes the synthetic source draw one class per generator (each with its own
fingerprint), so the demo shows attribution; `--unseen C` holds generators out of training.
`--params FILE` merges a further YAML file last (e.g. `params.multigen-sample.yaml`: real data, a
small ViT; `params.cross-demo.yaml`: train on one synthetic dataset, test on another); a relative
`datasets.<name>.path` in it is taken from the project root. A file that sets `datasets` replaces the
whole mapping: it names every dataset of its run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from aigi.errors import AigiError
from aigi.paths import REPORT_HTML

GIT = ["git", "-c", "user.name=aigi demo", "-c", "user.email=demo@aigi.invalid", "-c", "commit.gpgsign=false"]


REPLACED = ("prompts", "datasets")  # taken whole from the override: merging would keep the base's entries


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in REPLACED else v
    return out


def project_files(root: Path) -> list[str]:
    """The files git tracks (plus untracked, not ignored ones): what a fresh clone would have."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise AigiError(f"{root} is not a git checkout; clone the project with git to run the demo") from None
    return [f for f in out.stdout.decode().split("\0") if f and (root / f).is_file()]


def prepare(root: Path, dest: Path, overrides: dict[str, Any] | None = None) -> None:
    """Sync the project into `dest`, write its demo params and commit, so `dvc repro` there is a real run."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in project_files(root):
        if rel.split("/")[0] == dest.name and (root / dest.name).resolve() == dest.resolve():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_bytes() != (root / rel).read_bytes():
            shutil.copyfile(root / rel, target)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params = merge(params, yaml.safe_load((root / "params.demo.yaml").read_text()) or {})
    params = merge(params, overrides or {})
    params = merge(params, {"mlflow": {"tracking_uri": store_uri(root, params["mlflow"].get("tracking_uri"))}})
    new = yaml.safe_dump(params, sort_keys=False)
    if not (dest / "params.yaml").is_file() or (dest / "params.yaml").read_text() != new:
        (dest / "params.yaml").write_text(new)
    share_remotes(root, dest)
    if not (dest / ".git").exists():
        subprocess.run([*GIT, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    if subprocess.run([*GIT, "diff", "--cached", "--quiet"], cwd=dest).returncode:
        subprocess.run([*GIT, "commit", "-q", "-m", "demo snapshot"], cwd=dest, check=True)


def share_remotes(root: Path, dest: Path) -> None:
    """Point the copy's DVC remotes where the project's point: relative local URLs in .dvc/config
    would otherwise resolve from inside the copy (config.local overrides them there; git ignores it)."""
    from configobj import ConfigObj  # DVC's own config format

    config = ConfigObj(str(root / ".dvc" / "config"))
    local = ConfigObj()
    for section, values in config.items():
        url = values.get("url", "") if section.startswith("remote ") else ""
        if url and "://" not in url and not Path(url).is_absolute():
            local[section] = {"url": str((root / ".dvc" / url).resolve())}
    local.filename = str(dest / ".dvc" / "config.local")
    local.write()


def store_uri(root: Path, uri: str | None) -> str:
    """The project's store as the copy must name it: a relative SQLite path would resolve inside the copy."""
    if not uri:
        return f"sqlite:///{root.resolve() / 'mlflow.db'}"
    path = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and not Path(path).is_absolute():
        return f"sqlite:///{(root / path).resolve()}"
    return uri


def stage_env() -> dict[str, str]:
    """Environment for `dvc` in the copy: this interpreter first on PATH (the stages call `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def generator_overrides(root: Path, generators: list[str], unseen: list[str]) -> dict[str, Any]:
    """Params for a demo with several synthetic generators: prompts for REAL only (generators get the
    templates), the generators held out in `unseen`, and fewer images per class to stay about a minute."""
    missing = sorted(set(unseen) - set(generators))
    if missing:
        raise AigiError(f"--unseen {', '.join(missing)}: not among --generators {', '.join(generators)}")
    if len(set(generators) - set(unseen)) < 1:
        raise AigiError("--unseen holds out every generator; keep at least one for training")
    base = yaml.safe_load((root / "params.yaml").read_text())
    demo = yaml.safe_load((root / "params.demo.yaml").read_text())
    name = demo["train_on"]
    return {
        "datasets": {name: {**demo["datasets"][name], "synthetic_generators": generators,
                            "synthetic_train_per_class": 300, "synthetic_test_per_class": 100, "display_names": {}}},
        "zeroshot": {"prompts": {"REAL": base["zeroshot"]["prompts"]["REAL"]}},
        "finetune": {"epochs": 3},  # the fingerprints are learnt by then
        "evaluate": {"unseen_generators": unseen},
    }


def file_overrides(root: Path, path: Path) -> dict[str, Any]:
    """Params from a YAML file, with each relative `datasets.<name>.path` resolved against `root` (the copy
    is elsewhere)."""
    if not path.is_file():
        raise AigiError(f"--params {path}: no such file")
    over = yaml.safe_load(path.read_text()) or {}
    for dataset in (over.get("datasets") or {}).values():
        if (dataset or {}).get("path") and not Path(dataset["path"]).is_absolute():
            dataset["path"] = str((root / dataset["path"]).resolve())
    return over


def run(root: Path, dest: Path, overrides: dict[str, Any] | None = None) -> int:
    prepare(root, dest, overrides)
    print(f"demo: running `dvc repro` in {dest} ({_datasets(dest)}, {_arch(dest)}, CPU)", flush=True)
    code = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=dest, env=stage_env()).returncode
    if code == 0:
        uri = yaml.safe_load((dest / "params.yaml").read_text())["mlflow"]["tracking_uri"]
        print(f"demo: done. Report: {dest / REPORT_HTML}; metrics: {dest / 'metrics'}; "
              f"MLflow: `make ui` (store {uri}, experiment aigi-demo)")
    return code


def _arch(dest: Path) -> str:
    return yaml.safe_load((dest / "params.yaml").read_text())["model"]["arch"]


def _datasets(dest: Path) -> str:
    """`train on cifake (synthetic), test on other (synthetic)`: what the demo runs on."""
    from aigi import params

    p = params.load(dest / "params.yaml")
    return ", ".join([f"train on {p.train_on} ({p.training_dataset.source})",
                      *(f"test on {name} ({p.dataset(name).source})" for name in p.evaluate.test_on)])
