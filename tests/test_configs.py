"""Every shipped recipe config parses with its recipe's arguments (catches renamed or removed fields), through the
parser the `vlsafe` command and the pipeline use; every shipped pipeline plans (all its stage configs parse)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from vlsafe import recipes
from vlsafe.pipeline import Pipeline, load_pipeline, packaged_names

CONFIGS = sorted((REPO / "recipes/configs").glob("*/*.yaml"))
PIPELINES = sorted((REPO / "recipes/pipelines").glob("*.yaml"))


def _recipe(config: Path) -> str:
    # evaluate_safety, evaluate_suite: configs of recipes/evaluate_safety.py
    return "evaluate_safety" if config.stem.startswith("evaluate_") else config.stem


def test_every_recipe_has_configs() -> None:
    assert {path.stem for path in CONFIGS} >= set(recipes.RECIPES)
    assert recipes.ROOT == REPO / "recipes"  # the installed vlsafe.recipes is this folder (editable install)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_parses(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    # GPU configs ask for bf16, which TrainingArguments refuses on a machine without a GPU.
    no_gpu = [] if config.stem.startswith("evaluate_") else ["--bf16", "false"]
    parsed, script_args, accelerate_args = recipes.parse(_recipe(config), ["--config", str(config), *no_gpu])
    assert accelerate_args == [] and script_args == ["--config", str(config), *no_gpu]
    if not config.stem.startswith("evaluate_"):
        script, training, model = parsed
        assert model.model_name_or_path and training.output_dir


def test_config_names_resolve_to_the_packaged_files() -> None:
    assert recipes.config("sft_vlguard", "tiny") == REPO / "recipes/configs/tiny/sft_vlguard.yaml"
    assert (
        recipes.config("evaluate_safety", "tiny/evaluate_suite")
        == REPO / "recipes/configs/tiny/evaluate_suite.yaml"
    )
    assert recipes.accelerate_config("multi_gpu") == REPO / "recipes/accelerate/multi_gpu.yaml"
    assert recipes.pipeline_config("tiny") == REPO / "recipes/pipelines/tiny.yaml"
    with pytest.raises(recipes.VlsafeError, match="internvl3-8b.*tiny"):  # the names it has, listed
        recipes.config("sft_vlguard", "internvl3-8b")


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: p.stem)
def test_pipeline_plans(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the stage configs go to the pipeline's work_dir, relative to here
    stages = [stage for stage in ("sft", "dpo") if yaml.safe_load(pipeline.read_text()).get(stage)]
    config = load_pipeline(pipeline.stem, overrides=[f"{stage}.args.bf16=false" for stage in stages])
    planned = Pipeline(config)
    assert planned.evaluation.adapter == str(
        planned.adapter
    )  # the evaluation compares base and the last adapter
    assert planned.evaluation.base_model == planned.base_model
    assert (tmp_path / config.work_dir / "sft.yaml").is_file() and pipeline.stem in packaged_names()
