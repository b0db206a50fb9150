"""`aigi compare` (`make compare`): the three fine-tuning methods on the same data, side by side with zero-shot;
`aigi compare --train-on A,B`: the train x test matrix, one model per training dataset.

In the demo copy (so offline, on its synthetic data and the tiny CLIP), it queues one DVC experiment per
method (`dvc exp run --queue -n cmp-<method> -S finetune.method=<method>`), runs the queue (each in a
temporary copy; download, preprocess and zeroshot come from DVC's run cache, only training re-runs)
and prints `dvc exp show` with the headline columns. Each experiment's MLflow run is named after it.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from aigi import demo, methods
from aigi.errors import AigiError

METHODS = tuple(methods.METHODS)  # every row of the methods table, in its order
# The README's `dvc exp show`: zero-shot vs fine-tuned accuracy and ROC-AUC, and ROC-AUC and TPR@1%FPR per test
# set (`auc_ft_<set>`, `tpr1_zs_<set>`, ...) always; the other headline metrics of metrics/summary.json and the
# params where they differ; no other metrics, deps or timestamps. (DVC matches the patterns at the start.)
SHOW = ["exp", "show", "--no-pager", "--only-changed", "--keep", "(acc|auc)_(zs|ft)$|(auc|tpr1)_(zs|ft)_", "--drop",
        r"(?!Experiment|(acc|auc|f1|ece|tpr1)_|seed$|train_on$|"
        r"(datasets|audit|preprocess|model|zeroshot|finetune|evaluate|explain|report|mlflow)\.)"]


def experiment_name(method: str) -> str:
    return f"cmp-{method.replace('_', '-')}"


def dvc(project: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    # COLUMNS: a captured table is laid out at its natural width, not cut to 80 columns.
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env={**demo.stage_env(), "COLUMNS": "200"},
                          capture_output=capture, text=True)


def run(project: Path, methods: Sequence[str] = METHODS, overrides: Sequence[str] = ()) -> str:
    """Queue and run one experiment per method in `project` (a prepared demo copy with its baseline run);
    `overrides` are extra `-S key=value` for all of them. Returns the `dvc exp show` table."""
    commit_baseline(project)
    queue = [["exp", "run", "--queue", "-n", experiment_name(m),
              *(a for kv in (f"finetune.method={m}", *overrides) for a in ("-S", kv))] for m in methods]
    queue_and_run(project, [experiment_name(m) for m in methods], queue)
    show = dvc(project, *SHOW, capture=True)
    if show.returncode:
        raise AigiError(f"`dvc {' '.join(SHOW)}` failed in {project}: {show.stderr.strip()[-300:]}")
    return show.stdout


def commit_baseline(project: Path) -> None:
    """The project's state committed, as a user would: experiments then show against it, not against "!"."""
    subprocess.run([*demo.GIT, "add", "-A"], cwd=project, check=True)
    if subprocess.run([*demo.GIT, "diff", "--cached", "--quiet"], cwd=project).returncode:
        subprocess.run([*demo.GIT, "commit", "-q", "-m", "baseline for aigi compare"], cwd=project, check=True)


def queue_and_run(project: Path, names: Sequence[str], queue: Sequence[Sequence[str]]) -> None:
    """Replace earlier experiments of these `names`, queue each `dvc exp run --queue` argument list, run them."""
    listed = dvc(project, "exp", "list", "--name-only", capture=True).stdout.split()
    stale = [n for n in names if n in listed]
    if stale:  # a previous comparison: replace it (its MLflow runs stay in the store)
        dvc(project, "exp", "remove", *stale, capture=True)
    for args in queue:
        res = dvc(project, *args, capture=True)
        if res.returncode:
            why = (res.stderr or res.stdout).strip()[-300:]
            raise AigiError(f"`dvc {shlex.join(args)}` failed in {project}: {why}")
    if dvc(project, "exp", "run", "--run-all", "-j", "1").returncode:
        raise AigiError(f"a queued experiment failed in {project}; see `dvc queue logs <name>` there")


# ---- the train x test matrix ---------------------------------------------------------------------------------

MATRIX_PREFIX = "train-"  # experiment `train-<dataset>`: trained on that dataset


def matrix_sets(train_on: Sequence[str], test_on: Sequence[str]) -> list[str]:
    """The matrix's columns: every training dataset, then the project's other test sets, each once."""
    return list(dict.fromkeys([*train_on, *test_on]))


def matrix_commands(train_on: Sequence[str], sets: Sequence[str], overrides: Sequence[str] = ()) -> list[list[str]]:
    """One queued DVC experiment per training dataset: `train_on=<it>` and every other set of `sets` in
    `evaluate.test_on` (its own test split is the evaluate stage's), plus `overrides` (`key=value`)."""
    out = []
    for name in train_on:
        others = ",".join(s for s in sets if s != name)
        values = [f"train_on={name}", f"evaluate.test_on=[{others}]", *overrides]
        out.append(["exp", "run", "--queue", "-n", f"{MATRIX_PREFIX}{name}", *(a for kv in values for a in ("-S", kv))])
    return out


def matrix_from_show(show: list[dict[str, Any]], train_on: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """`{trained on: {tested on: {"finetuned": {roc_auc, tpr_at_fpr_1}, "zeroshot": {...}}}}` from `dvc exp show
    --json`, for the experiments `train-<name>` of `train_on` (the newest of each name). The trained-on cell is
    metrics/eval.json and zeroshot.json; the others metrics/test/<set>.json."""
    wanted = {f"{MATRIX_PREFIX}{n}": n for n in train_on}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            if exp.get("name") not in wanted or wanted[exp["name"]] in out:
                continue
            data = (exp.get("revs") or [{}])[0].get("data") or {}
            files = {path: m.get("data") for path, m in (data.get("metrics") or {}).items() if m.get("data")}
            cells: dict[str, dict[str, Any]] = {}
            if "metrics/eval.json" in files:
                cells[wanted[exp["name"]]] = {"finetuned": files["metrics/eval.json"],
                                              "zeroshot": files.get("metrics/zeroshot.json", {})}
            for path, values in files.items():
                if path.startswith("metrics/test/") and path.endswith(".json"):
                    cells[path.removeprefix("metrics/test/").removesuffix(".json")] = values
            out[wanted[exp["name"]]] = cells
    return {name: out[name] for name in train_on if name in out}  # rows in the order asked for


def format_matrix(matrix: dict[str, dict[str, dict[str, Any]]], sets: Sequence[str], model: str = "finetuned") -> str:
    """Rows: trained on; columns: tested on; cells `ROC-AUC / TPR@1%FPR` of `model` (`finetuned` or `zeroshot`)."""
    def cell(result: dict[str, Any] | None) -> str:
        if not result:
            return "–"
        auc, tpr = (result.get(k) for k in ("roc_auc", "tpr_at_fpr_1"))
        return " / ".join("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
                          for v in (auc, tpr))

    title = "fine-tuned" if model == "finetuned" else "zero-shot"
    head = [f"trained on \\ tested on ({title}: ROC-AUC / TPR@1%FPR)", *sets]
    rows = [[name, *(cell(cells.get(s, {}).get(model)) for s in sets)] for name, cells in matrix.items()]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows])


def run_matrix(project: Path, train_on: Sequence[str], overrides: Sequence[str] = (), commit: bool = True) -> str:
    """Queue and run one experiment per training dataset in `project`, each tested on every other dataset of
    `train_on` and of the project's `evaluate.test_on`; returns the fine-tuned and zero-shot matrices."""
    params = yaml.safe_load((project / "params.yaml").read_text()) or {}
    known = params.get("datasets")
    if known is not None and (unknown := [n for n in train_on if n not in known]):
        raise AigiError(f"--train-on names {', '.join(unknown)}, not a dataset of {project / 'params.yaml'} "
                        f"(datasets: {', '.join(known)}); add it under `datasets:` or fix the name")
    sets = matrix_sets(train_on, (params.get("evaluate") or {}).get("test_on") or [])
    if commit:
        commit_baseline(project)
    queue_and_run(project, [f"{MATRIX_PREFIX}{n}" for n in train_on], matrix_commands(train_on, sets, overrides))
    return show_matrix(project, train_on, sets)


def show_matrix(project: Path, train_on: Sequence[str], sets: Sequence[str]) -> str:
    """The matrices of the `train-<name>` experiments already run in `project` (from `dvc exp show --json`)."""
    show = dvc(project, "exp", "show", "--json", capture=True)
    if show.returncode:
        raise AigiError(f"`dvc exp show --json` failed in {project}: {show.stderr.strip()[-300:]}")
    matrix = matrix_from_show(json.loads(show.stdout), train_on)
    missing = [n for n in train_on if n not in matrix]
    if missing:
        raise AigiError(f"no experiment {', '.join(MATRIX_PREFIX + n for n in missing)} in {project}; "
                        f"run them first: aigi compare --train-on {','.join(train_on)}")
    return format_matrix(matrix, sets) + "\n\n" + format_matrix(matrix, sets, "zeroshot")


def main_matrix(root: Path, dest: Path | None, train_on: Sequence[str]) -> int:
    """`aigi compare --train-on A,B`: in the demo copy `dest` (after the demo's baseline run), or with
    `dest` None in the project itself (its params.yaml as it is, nothing committed), then the matrices."""
    if dest is not None:
        code = demo.run(root, dest)
        if code:
            return code
    project = dest or root
    print(run_matrix(project, train_on, commit=dest is not None))
    print(f"compare: in MLflow each experiment is one run named {MATRIX_PREFIX}<dataset>, with test_<set>_* and "
          "zeroshot_<set>_* per test set (and auc_ft_<set>, tpr1_ft_<set>)")
    return 0


def main(root: Path, dest: Path) -> int:
    """`make compare`: the demo (baseline), then the three methods as queued experiments, then the tables."""
    code = demo.run(root, dest)
    if code:
        return code
    print(run(dest))
    print(f"compare: the same table any time: cd {dest} && dvc {shlex.join(SHOW)}\n"
          "compare: in MLflow, `make ui`, experiment aigi-demo: select the cmp-* runs and click Compare")
    return 0
