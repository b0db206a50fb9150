"""`aigi compare` (`make compare`): the three fine-tuning methods on the same data, side by side with zero-shot.

In the demo copy (so offline, on its synthetic data and the tiny CLIP), it queues one DVC experiment per
method (`dvc exp run --queue -n cmp-<method> -S finetune.method=<method>`), runs the queue (each in a
temporary copy; download, preprocess and zeroshot come from DVC's run cache, only training re-runs)
and prints `dvc exp show` with the headline columns. Each experiment's MLflow run is named after it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from aigi import demo, methods
from aigi.errors import AigiError

METHODS = tuple(methods.METHODS)  # every row of the methods table, in its order
# The README's `dvc exp show`: zero-shot vs fine-tuned accuracy and ROC-AUC always, the other headline
# metrics of metrics/summary.json and the params where they differ; no other metrics, deps or timestamps.
SHOW = ["exp", "show", "--no-pager", "--only-changed", "--keep", "(acc|auc)_(zs|ft)$", "--drop",
        r"(?!Experiment|(acc|auc|f1|ece)_|seed$|train_on$|(datasets|preprocess|model|zeroshot|finetune|evaluate|report|mlflow)\.)"]


def experiment_name(method: str) -> str:
    return f"cmp-{method.replace('_', '-')}"


def dvc(project: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    # COLUMNS: a captured table is laid out at its natural width, not cut to 80 columns.
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env={**demo.stage_env(), "COLUMNS": "200"},
                          capture_output=capture, text=True)


def run(project: Path, methods: Sequence[str] = METHODS, overrides: Sequence[str] = ()) -> str:
    """Queue and run one experiment per method in `project` (a prepared demo copy with its baseline run);
    `overrides` are extra `-S key=value` for all of them. Returns the `dvc exp show` table."""
    # The baseline's results committed, as a user would: experiments then show against it, not against "!".
    subprocess.run([*demo.GIT, "add", "-A"], cwd=project, check=True)
    if subprocess.run([*demo.GIT, "diff", "--cached", "--quiet"], cwd=project).returncode:
        subprocess.run([*demo.GIT, "commit", "-q", "-m", "baseline for aigi compare"], cwd=project, check=True)
    listed = dvc(project, "exp", "list", "--name-only", capture=True).stdout.split()
    stale = [experiment_name(m) for m in methods if experiment_name(m) in listed]
    if stale:  # a previous comparison: replace it (its MLflow runs stay in the store)
        dvc(project, "exp", "remove", *stale, capture=True)
    for method in methods:
        sets = [a for kv in (f"finetune.method={method}", *overrides) for a in ("-S", kv)]
        res = dvc(project, "exp", "run", "--queue", "-n", experiment_name(method), *sets, capture=True)
        if res.returncode:
            raise AigiError(f"queueing {method} in {project} failed: {(res.stderr or res.stdout).strip()[-300:]}")
    if dvc(project, "exp", "run", "--run-all", "-j", "1").returncode:
        raise AigiError(f"a queued experiment failed in {project}; see `dvc queue logs <name>` there")
    show = dvc(project, *SHOW, capture=True)
    if show.returncode:
        raise AigiError(f"`dvc {' '.join(SHOW)}` failed in {project}: {show.stderr.strip()[-300:]}")
    return show.stdout


def main(root: Path, dest: Path) -> int:
    """`make compare`: the demo (baseline), then the three methods as queued experiments, then the tables."""
    code = demo.run(root, dest)
    if code:
        return code
    print(run(dest))
    print(f"compare: the same table any time: cd {dest} && dvc {shlex.join(SHOW)}\n"
          "compare: in MLflow, `make ui`, experiment aigi-demo: select the cmp-* runs and click Compare")
    return 0
