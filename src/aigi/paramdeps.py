"""Are a stage's dvc.yaml `params:` the params it reads? The params twin of `aigi.imports` (code deps).

A stage that reads a key it does not declare gives stale results silently: `dvc repro` does not re-run
it when the key changes. With `AIGI_RECORD_PARAMS=<folder>` set, every stage's `params.load()` notes the
keys the process reads (see `aigi.params.Recording`) into `<folder>/<stage>/`; `problems()` compares
them with the keys DVC tracked for that stage (dvc.lock, where foreach stages such as `preprocess@cifake`
are resolved). tests/test_pipeline_e2e.py runs the demo pipeline with the folder set and asserts none.

The rule: a *read* is a value that can change what the stage writes (a leaf reached by attribute, or a
section dumped with model_dump / model_dump_json: the report prints every param, finetune's checkpoint
fingerprint hashes its sections). `Params.flat()` is the logging view (MLflow run params, the
`evaluated_with.*` tags): those keys are *logged*, recorded apart and not checked, since MLflow is not an
output DVC tracks. Every read must be covered by a declared key (`finetune` covers `finetune.lr`), unless
NOT_DEPS names it for that stage with the reason; every declared key must have a read under it.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

import yaml

# Keys a stage reads without declaring them, by stage (its name before any `@`), with why that cannot
# leave a stale output. A pattern covers its sub-keys; `*` matches any part (datasets.*.source).
NOT_DEPS: dict[str, dict[str, str]] = {
    "preprocess": {
        "preprocess.workers": "how many processes decode the images: the speed, not the arrays written",
        "preprocess.chunk_size": "how many images one worker task takes: the speed, not the arrays written",
    },
    "finetune": {
        "mlflow": "where the run is logged (store, experiment): MLflow, not the model (a re-train on an experiment "
                  "rename would make a new registry version of the same weights)",
        "datasets": "the MLflow dataset's name and the run's description only; the data itself is the dep "
                    "data/processed/<train_on>",
    },
    "test": {
        "evaluate.test_on": "only a guard that the stage's own set is listed; which test@<set> stages exist is DVC's "
                            "foreach over it, and declaring it would re-score every set when one is added",
    },
}
# Keys a stage declares but may not read in a given run, by stage, with why the declaration stays.
_STORE_ONLY = {"mlflow.tracking_uri": "the store of the run it logs into; not read when MLFLOW_TRACKING_URI is set, "
                                     "which overrides it (tracking.tracking_uri)"}
_TRAIN_ROLE_ONLY = "read for the train_on dataset only: a test set (preprocess@<other>) has no train or val split"
UNREAD_DEPS: dict[str, dict[str, str]] = {
    "explain": _STORE_ONLY, "test": _STORE_ONLY, "summary": _STORE_ONLY,
    "preprocess": {key: _TRAIN_ROLE_ONLY for key in (
        "preprocess.train_per_class", "preprocess.val_fraction", "preprocess.drop_train_duplicates_of_test",
        "evaluate.unseen_generators")},
}


def covered(key: str, patterns: object) -> bool:
    """Whether `key` is one of `patterns` or under one (`finetune` covers `finetune.lr`)."""
    return any(fnmatchcase(key, p) or fnmatchcase(key, f"{p}.*") for p in patterns)  # type: ignore[attr-defined]


def declared(path: Path, params_file: str = "params.yaml") -> dict[str, list[str]]:
    """The params keys of each stage: from dvc.lock, what DVC tracked (foreach stages by their full name,
    `preprocess@cifake`), or from a dvc.yaml without foreach stages (entries of other params files left out)."""
    stages = (yaml.safe_load(Path(path).read_text()) or {}).get("stages", {})
    out = {}
    for name, stage in stages.items():
        entries = stage.get("params") or {}
        if isinstance(entries, dict):  # dvc.lock: {file: {key: value}}
            out[name] = sorted(entries.get(params_file, {}))
        else:  # dvc.yaml: [key, {file: [key, ...]}, ...]
            out[name] = sorted([e for e in entries if isinstance(e, str)]
                               + [k for e in entries if isinstance(e, dict) for k in e.get(params_file, [])])
    return out


def recorded(folder: Path) -> dict[str, dict[str, set[str]]]:
    """Per stage, the keys its processes read and logged (the union over every run recorded)."""
    out: dict[str, dict[str, set[str]]] = {}
    for f in sorted(Path(folder).glob("*/*.json")):
        data = json.loads(f.read_text())
        seen = out.setdefault(f.parent.name, {"read": set(), "logged": set()})
        seen["read"] |= set(data["read"])
        seen["logged"] |= set(data["logged"])
    return out


def problems(declared: dict[str, list[str]], recorded: dict[str, dict[str, set[str]]],
             not_deps: dict[str, dict[str, str]] | None = None,
             unread_deps: dict[str, dict[str, str]] | None = None) -> list[str]:
    """One line per mismatch between what each recorded stage read and what it declares."""
    not_deps = NOT_DEPS if not_deps is None else not_deps
    unread_deps = UNREAD_DEPS if unread_deps is None else unread_deps
    lines = []
    for stage, seen in sorted(recorded.items()):
        if stage not in declared:
            lines.append(f"{stage}: read params but is no stage of dvc.lock (ran outside `dvc repro`?)")
            continue
        base = stage.split("@")[0]
        keys = declared[stage]
        exempt = not_deps.get(base, {})
        lines += [f"{stage}: reads {key}, which its dvc.yaml params do not list" for key in sorted(seen["read"])
                  if not covered(key, keys) and not covered(key, exempt)]
        lines += [f"{stage}: lists {key} in its params but never reads it" for key in keys
                  if not any(covered(r, [key]) for r in seen["read"]) and not covered(key, unread_deps.get(base, {}))]
    return lines
