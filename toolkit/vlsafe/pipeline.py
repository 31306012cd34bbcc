"""The pipeline: a base model in; a safety-tuned adapter with an evaluated card, on the Hub with its Space, out.

    vlsafe run --config tiny                                   # `make demo`: the embedded default, on CPU
    vlsafe run --config llava-1.5-7b-vlguard --repo_id <user>/llava-1.5-7b-vlguard --space_id <user>/vlsafe-compare

Stages, in order: fixtures (optional: build the embedded default) -> sft -> dpo (optional: continues the SFT
adapter) -> evaluate (base vs tuned) -> card -> publish (with a repo_id) -> space (with a space_id). A training
or evaluation stage runs its recipe through `accelerate launch` with the stage's config: the recipe's own config
(a packaged name or a path) with the stage's `args` on top and the pipeline's wiring (the DPO stage continues the
SFT adapter; the evaluation compares the base model with the last adapter), written to <work_dir>/<stage>.yaml.

A stage is skipped when its output is complete and its fingerprint matches the one recorded when it finished
(<work_dir>/<stage>.json): the fingerprint covers the stage's config and its inputs (model and adapter weights
by `weights_fingerprint`, data files and folders by the names, sizes and modification times of their top-level
files, an upstream stage's output by its recorded fingerprint). An interrupted stage resumes: training from its
newest complete checkpoint (set save_strategy: steps), evaluation from its stored generations and verdicts. A
stage whose inputs changed since it ran starts afresh (a training stage drops the checkpoints of its earlier run).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlsafe import recipes
from vlsafe.cards import CARD, RESULTS, looks_like_repo_id, read_results, update_card
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.store import weights_fingerprint

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
CHECKPOINT_GLOB = "checkpoint-*"
# Config keys whose values are inputs read from disk (fingerprinted), per stage kind; weights by weights_fingerprint.
WEIGHT_KEYS = ("model_name_or_path", "sft_adapter", "base_model", "adapter", "judge_model", "guard_model")
DATA_KEYS = (
    "dataset", "helpful_dataset", "helpful_image_root", "general_dataset", "general_image_root",
    "preference_file", "preference_image_root", "safety_curve_benchmark_source", "benchmark_root",
    "references", "benign_prompts", "benign_image_root",
)  # fmt: skip
RUN_MODE_KEYS = ("resume",)  # how a stage runs, not what it computes: outside the fingerprint


# -- configuration ------------------------------------------------------------------------------------------------
@dataclass
class RecipeStage:
    """A stage that runs a recipe: its config (packaged name or path) and overrides, as YAML values."""

    recipe: str | None = None
    config: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class PublishStage:
    """Where the adapter goes on the Hub (no repo_id: not published)."""

    repo_id: str | None = None
    base_model_repo: str | None = None
    private: bool = False
    revision: str | None = None


@dataclass
class SpaceStage:
    """Where the compare Space goes (no space_id: no Space); it serves the published adapter."""

    space_id: str | None = None
    private: bool = False
    max_new_tokens: int = 256


@dataclass
class PipelineConfig:
    """A pipeline file, parsed (see the module docstring and recipes/pipelines/*.yaml)."""

    sft: RecipeStage
    evaluate: RecipeStage = field(default_factory=RecipeStage)
    dpo: RecipeStage | None = None
    publish: PublishStage = field(default_factory=PublishStage)
    space: SpaceStage = field(default_factory=SpaceStage)
    fixtures: str | None = None  # build the embedded default into this folder first
    work_dir: str = "outputs/pipeline"  # stage configs and records
    accelerate_config: str | None = None  # packaged name or path, for every recipe stage
    accelerate_args: list[str] = field(default_factory=list)  # e.g. [--num_processes, "8"]


SECTIONS = {
    "sft": RecipeStage,
    "evaluate": RecipeStage,
    "dpo": RecipeStage,
    "publish": PublishStage,
    "space": SpaceStage,
}


def packaged_names() -> list[str]:
    """The pipelines shipped in recipes/pipelines/."""
    return sorted(path.stem for path in (recipes.ROOT / "pipelines").glob("*.yaml"))


def _build(cls: type, values: Any, where: str) -> Any:
    """`cls(**values)`, refusing keys it does not have (a typo would otherwise be ignored)."""
    if not isinstance(values, dict):
        raise VlsafeError(f"{where} must be a mapping of settings, found {type(values).__name__}.")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise VlsafeError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}.")
    return cls(**values)


def _set(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override (value read as YAML) to the raw pipeline mapping."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise VlsafeError(f"--set {assignment!r}: write it as KEY=VALUE, e.g. sft.args.max_steps=20.")
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise VlsafeError(f"--set {assignment!r}: {part} is not a section.")
    node[last] = yaml.safe_load(value)


def load_pipeline(
    source: str,
    *,
    overrides: list[str] = (),
    repo_id: str | None = None,
    base_model_repo: str | None = None,
    space_id: str | None = None,
    private: bool | None = None,
) -> PipelineConfig:
    """The pipeline `source` names (a path or a packaged name), with `--set` overrides and Hub targets applied."""
    path = recipes.pipeline_config(source)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise VlsafeError(f"{path} must be a YAML mapping of pipeline settings.")
    for assignment in overrides:
        _set(raw, assignment)
    for section, key, value in (
        ("publish", "repo_id", repo_id),
        ("publish", "base_model_repo", base_model_repo),
        ("space", "space_id", space_id),
        ("publish", "private", private),
        ("space", "private", private),
    ):
        if value is not None:
            raw.setdefault(section, {})[key] = value
    if "sft" not in raw:
        raise VlsafeError(
            f"{path} has no sft section: a pipeline trains first (sft: {{recipe: sft_vlguard, ...}})."
        )
    values = dict(raw)
    for name, cls in SECTIONS.items():
        if raw.get(name) is not None:
            values[name] = _build(cls, raw[name], f"{path}: {name}")
        elif name in raw and name != "dpo":  # an empty section: its defaults
            values[name] = cls()
    config = _build(PipelineConfig, values, str(path))
    config.sft.recipe = config.sft.recipe or "sft_vlguard"
    if config.sft.recipe not in ("sft_vlguard", "sft_mis"):
        raise VlsafeError(f"{path}: sft.recipe is {config.sft.recipe!r}; choose sft_vlguard or sft_mis.")
    if config.dpo is not None:
        config.dpo.recipe = "dpo_safety"
    config.evaluate.recipe = "evaluate_safety"
    return config


# -- fingerprints and records -------------------------------------------------------------------------------------
def digest(value: Any) -> str:
    """A short, stable digest of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str | None:
    """The digest of a file's bytes (None when it does not exist)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def data_stamp(value: Any) -> Any:
    """What a data input's fingerprint covers: a file's size and modification time, a folder's top-level files'
    names, sizes and times (cheap for folders of many images); a Hub id or anything else as it is."""
    if isinstance(value, list):
        return [data_stamp(item) for item in value]
    if not isinstance(value, str) or not Path(value).exists():
        return value
    path = Path(value)
    if path.is_file():
        return f"{path.stat().st_size}:{path.stat().st_mtime_ns}"
    return digest(sorted(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in path.iterdir()))


def input_stamps(values: dict[str, Any]) -> dict[str, Any]:
    """The fingerprints of the local inputs a stage config names (model and adapter weights, data)."""
    stamps = {}
    for key in WEIGHT_KEYS:
        if isinstance(values.get(key), str):
            stamps[key] = weights_fingerprint(values[key]) or values[key]
    for key in DATA_KEYS:
        if values.get(key) is not None:
            stamps[key] = data_stamp(values[key])
    return stamps


@dataclass
class Record:
    """What <work_dir>/<stage>.json remembers of a stage's last run."""

    fingerprint: str
    status: str  # "started" or "done"
    outputs: dict[str, Any] = field(default_factory=dict)


def read_record(work_dir: Path, stage: str) -> Record | None:
    """The stage's record, or None (never run, or a record of another version that cannot be trusted)."""
    path = work_dir / f"{stage}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != RECORD_VERSION:
            return None
        return Record(data["fingerprint"], data["status"], data.get("outputs") or {})
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def write_record(work_dir: Path, stage: str, record: Record, inputs: dict[str, Any]) -> None:
    """Write the record atomically (a kill mid-write leaves the previous one)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{stage}.json"
    partial = path.with_suffix(".json.partial")
    data = {"version": RECORD_VERSION, **dataclasses.asdict(record), "inputs": inputs}
    partial.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    partial.replace(path)


# -- stages -------------------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One step of the pipeline, built when the stages before it have run (its inputs are their outputs)."""

    name: str
    inputs: dict[str, Any]  # what the fingerprint covers
    run: Any  # (resume: bool) -> dict of outputs to record
    check: Any = (
        None  # () -> the current outputs, None when incomplete; None: trust the record (remote stages)
    )
    restart: Any = None  # () -> None: clear what an earlier run with other inputs left behind


def execute(stage: Stage, work_dir: Path) -> str:
    """Run `stage` unless its recorded run is complete and current; "skipped", "resumed" or "ran"."""
    fingerprint = digest(stage.inputs)
    record = read_record(work_dir, stage.name)
    current = record is not None and record.fingerprint == fingerprint
    if current and record.status == "done":
        if stage.check is None or stage.check() == record.outputs:
            logger.info("Stage %s: up to date, skipped", stage.name)
            return "skipped"
        logger.info("Stage %s: its output changed since it ran: running it again", stage.name)
    resume = current and record.status == "started"
    if record is not None and not resume and stage.restart is not None:
        logger.info("Stage %s: its inputs changed since it ran: starting afresh", stage.name)
        stage.restart()
    write_record(work_dir, stage.name, Record(fingerprint, "started"), stage.inputs)
    logger.info("Stage %s: %s", stage.name, "resuming the interrupted run" if resume else "running")
    outputs = stage.run(resume)
    if stage.check is not None:
        outputs = stage.check()
        if outputs is None:
            raise VlsafeError(f"Stage {stage.name} finished but its output is incomplete; see its log above.")
    write_record(work_dir, stage.name, Record(fingerprint, "done", outputs), stage.inputs)
    return "resumed" if resume else "ran"


def stage_config(
    stage: RecipeStage, wiring: dict[str, Any], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The stage's recipe config: `defaults`, then its file (if any), the stage's args and the pipeline's wiring."""
    values: dict[str, Any] = dict(defaults or {})
    if stage.config:
        path = recipes.config(stage.recipe, stage.config)
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise VlsafeError(f"{path} must be a YAML mapping of {stage.recipe} settings.")
        values |= loaded
    return values | copy.deepcopy(stage.args) | wiring


def write_stage_config(work_dir: Path, name: str, values: dict[str, Any]) -> Path:
    """<work_dir>/<name>.yaml: the config the stage's recipe is launched with."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def parsed_stage(recipe: str, path: Path) -> list[Any]:
    """The recipe's dataclasses for a stage config: checks it before anything runs, and gives its defaults."""
    parsed, _, rest = recipes.parse(recipe, ["--config", str(path)])
    if rest:  # cannot happen from a file: the config's unknown keys are refused by recipes.parse
        raise VlsafeError(f"{path}: unexpected options {rest}")
    return parsed


def is_trained(folder: Path) -> bool:
    """Whether a training output folder is complete: weights and the training summary (written after them)."""
    return (folder / "training_summary.json").is_file() and any(folder.glob("*.safetensors"))


class Pipeline:
    """The stages of a `PipelineConfig`, run in order (see the module docstring)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.work_dir = Path(config.work_dir)
        self.launch_args = list(config.accelerate_args)
        if config.accelerate_config:
            self.launch_args = ["--accelerate_config", config.accelerate_config, *self.launch_args]
        self.status: dict[str, str] = {}
        self._plan()

    def _plan(self) -> None:
        """Write and parse every recipe stage's config, so a bad setting stops the run before any training."""
        config = self.config
        self.sft_values = stage_config(config.sft, {})
        _, sft_training, sft_model = self._parse("sft", config.sft.recipe, self.sft_values)
        self.base_model = sft_model.model_name_or_path
        self.adapter = Path(sft_training.output_dir)
        if config.dpo is not None:
            self.dpo_values = stage_config(
                config.dpo, {"sft_adapter": str(self.adapter)}, {"model_name_or_path": self.base_model}
            )
            dpo_data, dpo_training, dpo_model = self._parse("dpo", "dpo_safety", self.dpo_values)
            if dpo_model.model_name_or_path != self.base_model:
                raise VlsafeError(
                    f"The dpo stage trains on {dpo_model.model_name_or_path}, the sft stage on {self.base_model}: "
                    "DPO continues the SFT adapter, so both need the same base model."
                )
            self.adapter = Path(dpo_training.output_dir)
        wiring = {"base_model": self.base_model, "adapter": str(self.adapter)}
        self.eval_values = stage_config(config.evaluate, wiring)
        (self.evaluation,) = self._parse("evaluate", "evaluate_safety", self.eval_values | {"resume": True})
        if config.space.space_id and not config.publish.repo_id:
            raise VlsafeError(
                "space.space_id is set but publish.repo_id is not: the Space serves the published adapter."
            )
        if config.space.space_id and not (
            looks_like_repo_id(self.base_model) and not Path(self.base_model).exists()
        ):
            if not config.publish.base_model_repo:
                raise VlsafeError(
                    f"The base model {self.base_model} is a local folder and a Space loads from the Hub: set "
                    "publish.base_model_repo (--base_model_repo) to its Hub id."
                )

    def _parse(self, name: str, recipe: str, values: dict[str, Any]) -> list[Any]:
        return parsed_stage(recipe, write_stage_config(self.work_dir, name, values))

    def run(self) -> dict[str, str]:
        """Run every stage in order; {stage: skipped/resumed/ran} (stages not asked for are absent)."""
        config = self.config
        if config.fixtures:
            from vlsafe.fixtures.__main__ import main as build_fixtures

            build_fixtures(["--out", config.fixtures])  # keeps what exists: cheap after the first run
        self._run(self.training_stage("sft", config.sft.recipe, self.sft_values))
        if config.dpo is not None:
            self._run(self.training_stage("dpo", "dpo_safety", self.dpo_values))
        self._run(self.evaluation_stage())
        self._run(self.card_stage())
        if config.publish.repo_id:
            self._run(self.publish_stage())
        if config.space.space_id:
            self._run(self.space_stage())
        return self.status

    def _run(self, stage: Stage) -> None:
        self.status[stage.name] = execute(stage, self.work_dir)

    def _launch(self, name: str, recipe: str, values: dict[str, Any]) -> None:
        path = write_stage_config(self.work_dir, name, values)
        status = recipes.launch(recipe, ["--config", str(path)], self.launch_args)
        if status != 0:
            raise VlsafeError(
                f"Stage {name} ({recipe}) failed with exit status {status} (its log is above). Fix the problem and "
                f"run the same command again: finished stages are skipped, this one resumes."
            )

    def _upstream(self, name: str) -> str | None:
        record = read_record(self.work_dir, name)
        return record.fingerprint if record else None

    def training_stage(self, name: str, recipe: str, values: dict[str, Any]) -> Stage:
        """SFT or DPO: the recipe through accelerate, into its output_dir (resumes from checkpoints)."""
        _, training, _ = self._parse(name, recipe, values)
        output = Path(training.output_dir)

        def restart() -> None:
            for checkpoint in output.glob(CHECKPOINT_GLOB):  # else the trainer would resume the earlier run
                shutil.rmtree(checkpoint)

        inputs = {"recipe": recipe, "config": values, "inputs": input_stamps(values)}
        if name == "dpo":
            inputs["sft"] = self._upstream("sft")
        return Stage(
            name,
            inputs,
            run=lambda resume: self._launch(name, recipe, values),
            check=lambda: {"weights": weights_fingerprint(output)} if is_trained(output) else None,
            restart=restart,
        )

    def evaluation_stage(self) -> Stage:
        """Base vs tuned on the chosen benchmarks, through accelerate; resumes from its stores."""
        values, results = self.eval_values, Path(self.evaluation.output_dir) / RESULTS
        fingerprinted = {k: v for k, v in values.items() if k not in RUN_MODE_KEYS}
        inputs = {
            "config": fingerprinted,
            "inputs": input_stamps(values),
            "adapter": self._upstream(self._last()),
        }
        return Stage(
            "evaluate",
            inputs,
            run=lambda resume: self._launch("evaluate", "evaluate_safety", values | {"resume": resume}),
            check=lambda: {"results": file_digest(results)} if results.is_file() else None,
        )

    def _last(self) -> str:
        return "dpo" if self.config.dpo is not None else "sft"

    def card_stage(self) -> Stage:
        """The adapter's card with the evaluation's numbers (and the results next to it, to be published)."""
        results = Path(self.evaluation.output_dir) / RESULTS
        inputs = {"adapter": weights_fingerprint(self.adapter), "results": file_digest(results)}

        def run(resume: bool) -> None:
            update_card(self.adapter, results)

        return Stage("card", inputs, run=run, check=lambda: {"card": file_digest(self.adapter / CARD)})

    def publish_stage(self) -> Stage:
        """One commit of the adapter folder to publish.repo_id."""
        from vlsafe.hub import publishable_files, push_to_hub

        target = self.config.publish
        files = publishable_files(self.adapter)
        contents = {name: weights_fingerprint(path.parent) if name.endswith(".safetensors") else file_digest(path)
                    for name, path in files.items()}  # fmt: skip
        inputs = {"target": dataclasses.asdict(target), "files": contents}

        def run(resume: bool) -> dict[str, Any]:
            result = push_to_hub(
                self.adapter,
                target.repo_id,
                private=target.private,
                revision=target.revision,
                base_model_repo=target.base_model_repo,
            )
            print(f"Published {self.adapter} to {result.repo_id}@{result.revision}: {result.url}")
            return {"repo_id": result.repo_id, "commit": result.commit, "url": result.url}

        return Stage("publish", inputs, run=run)

    def space_stage(self) -> Stage:
        """The compare Space serving the published adapter (spaces/push_space.py)."""
        published = read_record(self.work_dir, "publish")
        adapter = published.outputs["repo_id"]
        target = self.config.space
        inputs = {
            "target": dataclasses.asdict(target),
            "adapter": adapter,
            "commit": published.outputs["commit"],
        }

        def run(resume: bool) -> dict[str, Any]:
            module = recipes.push_space_module()
            arguments = module.PushArguments(
                space_id=target.space_id,
                adapter=adapter,
                base_model=self.config.publish.base_model_repo,
                private=target.private,
                max_new_tokens=target.max_new_tokens,
            )
            url = module.push_space(arguments)
            print(f"Pushed the compare Space {target.space_id}: {url}")
            return {"url": url}

        return Stage("space", inputs, run=run)


def run_pipeline(config: PipelineConfig) -> dict[str, str]:
    """Run the pipeline; print what each stage did and the evaluation table. {stage: skipped/resumed/ran}."""
    from vlsafe.evaluation.report import format_table

    pipeline = Pipeline(config)
    status = pipeline.run()
    if status["evaluate"] == "skipped":  # else the evaluation printed it as it finished
        print("\n" + format_table(read_results(Path(pipeline.evaluation.output_dir) / RESULTS)))
    print("\nPipeline: " + ", ".join(f"{name} {done}" for name, done in status.items()))
    print(f"Adapter and card: {pipeline.adapter}; evaluation: {pipeline.evaluation.output_dir}")
    return status
