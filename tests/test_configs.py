"""Every shipped recipe config parses with its recipe's arguments (catches renamed or removed fields)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from trl import DPOConfig, SFTConfig, TrlParser

from tests.conftest import REPO
from vlsafe.evaluation.config import EvaluationConfig

CONFIGS = sorted((REPO / "recipes/configs").glob("*/*.yaml"))


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _dataclasses(recipe: str) -> tuple:
    if recipe.startswith("evaluate_"):  # evaluate_safety, evaluate_suite: configs of recipes/evaluate_safety.py
        return (EvaluationConfig,)
    module = _recipe(recipe)
    script_args = {
        "sft_vlguard": "VLGuardArguments",
        "sft_mis": "MISArguments",
        "dpo_safety": "DPOSafetyArguments",
    }
    training = DPOConfig if recipe == "dpo_safety" else SFTConfig
    return getattr(module, script_args[recipe]), training, module.ModelArguments  # what the recipe parses


def test_every_recipe_has_configs() -> None:
    recipes = {path.stem for path in CONFIGS}
    assert {"sft_vlguard", "sft_mis", "dpo_safety", "evaluate_safety"} <= recipes


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_parses(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    # GPU configs ask for bf16, which TrainingArguments refuses on a machine without a GPU.
    no_gpu = [] if config.stem.startswith("evaluate_") else ["--bf16", "false"]
    parsed = TrlParser(_dataclasses(config.stem)).parse_args_and_config(["--config", str(config), *no_gpu])
    if not config.stem.startswith("evaluate_"):
        script, training, model = parsed
        assert model.model_name_or_path and training.output_dir
