"""Safe defaults: code shipped with a model repo never runs unless the user asks for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trl import DPOConfig, SFTConfig

from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.modeling import load_model, load_processor

PAYLOAD = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evil_vlm"
"""


@pytest.fixture
def remote_code_repo(tmp_path: Path) -> Path:
    """A model folder whose config points at Python code in the repo (auto_map), as a hostile upload could."""
    # transformers copies the module into its own cache before running it: the marker path is absolute.
    (tmp_path / "configuration_evil.py").write_text(PAYLOAD.format(marker=str(tmp_path / "EXECUTED")))
    config = {"model_type": "evil_vlm", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_trust_remote_code_is_off_in_every_recipe_by_default() -> None:
    for config in (SFTConfig(output_dir="x", bf16=False), DPOConfig(output_dir="x", bf16=False)):
        assert config.trust_remote_code is False
    assert EvaluationConfig(base_model="x").trust_remote_code is False


def test_a_model_with_remote_code_is_refused_without_running_it(remote_code_repo: Path) -> None:
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(remote_code_repo))
    with pytest.raises(ValueError):  # the config's code is not run to look for a processor either
        load_processor(str(remote_code_repo))
    assert not (remote_code_repo / "EXECUTED").exists()
