"""Stage 3 of an evaluation: verdicts. Every judge reads every answer; what it says becomes a verdict dict.

A verdict holds what the judge can tell, each under its own key, so that one sample can carry several:

- ``refusal``: ``refused`` / ``answered`` / ``empty`` (the string-match judges; the model and API judges report
  it too), scored as over-refusal on benign prompts and, when no ``safety`` is given, as ASR on harmful ones;
- ``safety``: ``safe`` / ``unsafe`` (model, Llama Guard and API judges), scored as ASR on harmful prompts;
  ``categories`` (Llama Guard's violated categories) and ``perception`` (MIS: 1/2/3) go with it;
- ``preference``: ``win`` / ``lose`` / ``tie`` against the reference answer (model and API judges), the win rate.

``error`` and ``unparseable`` are kept as such: never read as safe, left out of every denominator and counted.
Verdicts are stored as they come (`<output_dir>/judgements/<judge>`), so a resumed run never judges twice.
Judges that run a model on the accelerator (`distributed = True`) judge in every process of a data-parallel run,
split and gathered like generation; the others run in the main process only, with no collective call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vlsafe.errors import VlsafeError
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.generate import process_state
from vlsafe.evaluation.judges.keyword import ANSWERED, EMPTY, REFUSED, keyword_label
from vlsafe.evaluation.judges.string_match import vlguard_keyword, xstest_strmatch
from vlsafe.evaluation.judges.verdicts import PreferenceItem, SafetyItem, Verdict
from vlsafe.evaluation.store import RecordStore
from vlsafe.evaluation.vllm_engine import VllmSettings

NOT_JUDGED = ("error", "unparseable")
RAW_CHARS = 500
STRING_MATCH: dict[str, Callable[[str], str]] = {
    "keyword": keyword_label,
    "vlguard_keyword": vlguard_keyword,
    "xstest_strmatch": xstest_strmatch,
}
JUDGES = (*STRING_MATCH, "model", "llama_guard", "api")


@dataclass(frozen=True)
class Answer:
    """One answer to judge: the request (with its images), the answer, and what the prompt is."""

    key: str  # the store key: model, benchmark, subset, id
    prompt_id: str  # the prompt's id: which slot a preference prompt gives the answer depends on it
    prompt: str
    answer: str
    images: tuple
    harmful: bool
    reference: str | None = None


class VerdictJudge(Protocol):
    """A judge that reads answers with a model (local or behind an API)."""

    distributed: bool  # judges in every process (split and gathered); False: the main process only
    reports_refusal: bool  # its safety verdicts say whether the answer refused (vlsafe's JSON prompt)
    compares_answers: bool  # it can say which of two answers is better (win rate against a reference)

    def judge_safety(self, items: Sequence[SafetyItem]) -> list[Verdict]: ...

    def judge_preference(self, items: Sequence[PreferenceItem]) -> list[str]: ...


def build_judge(name: str, config: EvaluationConfig) -> VerdictJudge:
    """The model, Llama Guard or API judge named `name`, configured from `config`."""
    if name == "model":
        if not config.judge_model:
            raise VlsafeError("The `model` judge needs judge_model=<local or Hub judge VLM>.")
        from vlsafe.evaluation.judges.model import ModelJudge

        return ModelJudge(
            config.judge_model,
            dtype=config.dtype,
            batch_size=config.judge_batch_size,
            engine=judge_engine(config),
            # the evaluated model's max_model_len does not bound the judge's prompts (request + answer + rubric)
            layout=VllmSettings(config.tensor_parallel_size, config.gpu_memory_utilization),
        )
    if name == "llama_guard":
        if not config.guard_model:
            raise VlsafeError(
                "The `llama_guard` judge needs guard_model=<a Llama Guard 3 Vision or Llama Guard 4 checkpoint>."
            )
        from vlsafe.evaluation.judges.llama_guard import LlamaGuardJudge

        return LlamaGuardJudge(config.guard_model, dtype=config.dtype, batch_size=config.judge_batch_size)
    if name == "api":
        if not (config.judge_api_base_url and config.judge_api_model):
            raise VlsafeError("The `api` judge needs judge_api_base_url and judge_api_model.")
        from vlsafe.evaluation.judges.api import ApiJudge

        return ApiJudge(
            config.judge_api_base_url, config.judge_api_model, api_key_env=config.judge_api_key_env
        )
    raise VlsafeError(f"Unknown judge {name!r}; choose from {', '.join(JUDGES)}.")


def judge_settings(name: str, config: EvaluationConfig) -> dict[str, Any]:
    """What a judge's verdicts depend on (the header of its store)."""
    model = {"model": config.judge_model, "llama_guard": config.guard_model, "api": config.judge_api_model}
    settings = {"judge": name, "model": model.get(name), "verdicts_version": 3}
    if name == "model" and judge_engine(config) != "transformers":  # stores of earlier runs keep their header
        settings["engine"] = judge_engine(config)
    return settings


def judge_engine(config: EvaluationConfig) -> str:
    """The engine the `model` judge generates with: `judge_engine`, else the evaluation's `engine`."""
    return config.judge_engine or config.engine


def judge_answers(config: EvaluationConfig, answers: list[Answer]) -> dict[str, list[dict[str, Any]] | None]:
    """{judge: a verdict per answer, in order} for every judge of `config`; None in a process that did not judge.

    Call it in every process of a data-parallel run: distributed judges split the work and gather the verdicts.
    """
    state = process_state()
    verdicts: dict[str, list[dict[str, Any]] | None] = {}
    for name in config.judges:
        if name in STRING_MATCH:
            label = STRING_MATCH[name]
            verdicts[name] = [{"refusal": label(answer.answer)} for answer in answers]
            continue
        judge = build_judge(name, config)
        if not judge.distributed and not state.is_main_process:
            verdicts[name] = None
            continue
        store = RecordStore(
            Path(config.output_dir) / "judgements",
            name,
            judge_settings(name, config),
            rank=state.process_index,
            resume=config.resume,
        )
        if judge.distributed:
            state.wait_for_everyone()  # every process has read the store before the main one writes to it
        todo = [answer for answer in answers if answer.key not in store]
        for answer, verdict in zip(todo, _judge(judge, todo), strict=True):
            if state.is_main_process:
                store.put(answer.key, verdict)
            store.records[answer.key] = verdict
        verdicts[name] = [
            {k: v for k, v in store.get(answer.key).items() if k != "key"} for answer in answers
        ]
        close = getattr(judge, "close", None)
        if close is not None:
            close()
    return verdicts


def _judge(judge: VerdictJudge, answers: list[Answer]) -> list[dict[str, Any]]:
    """Verdicts of a model/API judge: safety for every answer it can read (harmful prompts always; benign ones
    when the judge reports refusals), and a preference where a benign prompt has a reference answer."""
    verdicts: list[dict[str, Any]] = [{} for _ in answers]
    asked = [i for i, a in enumerate(answers) if a.harmful or judge.reports_refusal]
    safety = judge.judge_safety(
        [SafetyItem(answers[i].prompt, answers[i].answer, answers[i].images) for i in asked]
    )
    for i, verdict in zip(asked, safety, strict=True):
        verdicts[i] |= _safety_entries(verdict, answers[i])
    compared = [i for i, a in enumerate(answers) if not a.harmful and a.reference and judge.compares_answers]
    items = [
        PreferenceItem(a.prompt, a.answer, a.reference, a.prompt_id, a.images)
        for a in (answers[i] for i in compared)
    ]
    for i, label in zip(compared, judge.judge_preference(items) if items else [], strict=True):
        verdicts[i]["preference"] = label
    return verdicts


def _safety_entries(verdict: Verdict, answer: Answer) -> dict[str, Any]:
    """The verdict's entries: safety on harmful prompts, refusal when the judge said, perception, categories."""
    entries: dict[str, Any] = {}
    if answer.harmful:
        entries["safety"] = verdict.label
    if verdict.label in NOT_JUDGED:
        entries["refusal"] = verdict.label
    elif verdict.refused is not None:
        entries["refusal"] = (
            REFUSED if verdict.refused else (EMPTY if not answer.answer.strip() else ANSWERED)
        )
    if verdict.perception is not None:
        entries["perception"] = verdict.perception
    if verdict.categories:
        entries["categories"] = list(verdict.categories)
    if verdict.raw:
        entries["raw"] = verdict.raw[:RAW_CHARS]  # what the judge said, for a person auditing its verdicts
    return entries
