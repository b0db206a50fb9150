"""What the code needs is declared: every module imports in a fresh interpreter, every third-party import
is a dependency in pyproject.toml, and dvc.yaml lists exactly the aigi modules each stage runs."""

import ast
import subprocess
import sys
from importlib.metadata import packages_distributions

import pytest
import yaml
from conftest import ROOT

from aigi.imports import local_modules

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
SRC = ROOT / "src"
# Files a stage uses without importing them: the pyfunc entry point is logged by path (models from code).
USED_NOT_IMPORTED = {"evaluate": {"src/aigi/serving_model.py"}}


def canonical(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


def declared() -> set[str]:
    """The dependencies and the optional extras (e.g. `spark`: imported only inside the functions that need
    it, which the fresh-interpreter test above checks for every module)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    deps = [*project["dependencies"], *(d for extra in extras for d in extra)]
    names = set()
    for dep in deps:
        name = dep
        for sep in "<>=!~[; ":
            name = name.split(sep)[0]
        names.add(canonical(name))
    return names


def test_every_module_imports_in_a_fresh_interpreter():
    modules = sorted(".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
                     for f in (SRC / "aigi").rglob("*.py") if f.name != "serving_model.py")
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    res = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert res.returncode == 0, res.stderr[-3000:]


def test_every_third_party_import_is_declared():
    dists = packages_distributions()
    missing = {}
    for f in [*(SRC / "aigi").rglob("*.py"), *(ROOT / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = {node.module.split(".")[0]}
            else:
                continue
            for top in tops - set(sys.stdlib_module_names) - {"aigi", "__future__"}:
                if not {canonical(d) for d in dists.get(top, [top])} & declared():
                    missing[top] = f.relative_to(ROOT).as_posix()
    assert not missing, f"imported but not in pyproject dependencies: {missing}"


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def stage_bodies() -> dict[str, dict]:
    """Each dvc.yaml stage's body; a `foreach` stage's is its `do` (one per dataset once DVC expands it)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def test_dvc_deps_are_exactly_the_code_each_stage_runs():
    problems = []
    for name, stage in stage_bodies().items():
        script = next(word for word in stage["cmd"].split() if word.endswith(".py"))
        deps = [str(d) for d in stage["deps"]]
        runs = {script, *(f.relative_to(ROOT).as_posix() for f in local_modules(ROOT / script, SRC / "aigi"))}
        runs |= USED_NOT_IMPORTED.get(name, set())
        problems += [f"{name}: runs {f}, not a dep" for f in sorted(runs) if not covered(f, deps)]
        code_deps = {d for d in deps if d.endswith(".py")}
        problems += [f"{name}: dep {d} is not run" for d in sorted(code_deps - runs)]
    assert not problems, "\n".join(problems)


def test_mlflow_store_and_experiment_do_not_retrain():
    """Renaming the experiment or moving the store changes where runs are logged, not the model."""
    finetune = stage_bodies()["finetune"]
    assert not [p for p in finetune["params"] if str(p).split(".")[0] == "mlflow"]
