"""The methods table is the one list of fine-tuning methods: the params' choice and `aigi compare` derive from it."""

import subprocess
import sys
from typing import get_args

import pytest
from conftest import ROOT

from aigi import compare, methods
from aigi.params import FinetuneParams


def test_params_choice_and_compare_are_the_table():
    assert get_args(FinetuneParams.model_fields["method"].annotation) == tuple(methods.METHODS)
    assert tuple(methods.METHODS) == compare.METHODS
    assert FinetuneParams().method in methods.METHODS


def test_a_method_added_to_the_table_is_a_params_choice_and_a_compare_experiment():
    code = (
        "from aigi import methods\n"
        "methods.METHODS['toy'] = methods.Method('toy', frozenset({methods.HEAD}), scores_text=False, "
        "head_from_text=False)\n"
        "from aigi import compare, params\n"
        "assert params.FinetuneParams(method='toy').method == 'toy'\n"
        "assert 'toy' in compare.METHODS, compare.METHODS\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]


def test_a_method_names_only_known_parts():
    with pytest.raises(ValueError, match="unknown parts"):
        methods.Method("odd", frozenset({"decoder"}), scores_text=False, head_from_text=False)
