"""Stage 2 of an evaluation: generations. The transformers engine answers every prompt as base and as tuned.

One base model is held in memory: the tuned answers come with the adapter on, the base answers inside
`model.disable_adapter()`. A fully fine-tuned model (a folder of full weights, no adapter) is loaded in place of
the base for its turn. Answers are stored as they finish (`<output_dir>/generations/<variant>-<benchmark>`), so an
interrupted run resumes; each store's header holds what its answers depend on, and a run with other settings is
refused. A second engine (vLLM) implements `variants`, `settings` and `answering` the same way.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel

from vlsafe.cards import is_full_model as _is_full_model_folder
from vlsafe.data.length import token_lengths
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.generate import generate_records, process_state
from vlsafe.evaluation.prompts import BENIGN
from vlsafe.evaluation.store import RecordStore, weights_fingerprint
from vlsafe.hub import attach_adapter, tuned_processor
from vlsafe.modeling import load_model, load_processor
from vlsafe.speed import generation_batch_size

logger = logging.getLogger(__name__)


def is_full_model(source: str | None) -> bool:
    """Whether `source` is a local folder of full model weights (full fine-tuning) rather than a LoRA adapter
    (`vlsafe.cards.is_full_model`)."""
    return bool(source) and _is_full_model_folder(source)


class TransformersEngine:
    """Batched greedy generation with transformers, data-parallel under `accelerate launch`."""

    name = "transformers"

    def __init__(self, config: EvaluationConfig):
        self.config = config
        self.state = process_state()
        self.model = self._load(config.base_model)
        self.base_processor = load_processor(config.base_model, max_pixels=config.max_pixels)
        self.processors = {}
        if config.adapter is None or config.evaluate_base:
            self.processors["base"] = self.base_processor
        if config.adapter is not None:
            self.processors["tuned"] = self._tuned_processor()
            if not is_full_model(config.adapter):
                self.model = self._attach_adapter(self.model)
        self.batch_size = config.batch_size

    @property
    def variants(self) -> list[str]:
        return list(self.processors)

    def settings(self, variant: str) -> dict[str, Any]:
        """What the answers of `variant` depend on (the header of its stores)."""
        config = self.config
        settings = {
            "engine": self.name,
            "base_model": config.base_model,
            "max_new_tokens": config.max_new_tokens,
            "dtype": config.dtype,
            "max_pixels": config.max_pixels,
        }
        if variant == "tuned":
            settings |= {
                "adapter": config.adapter,
                "adapter_weights": weights_fingerprint(config.adapter),  # a retrained adapter: answers stale
                "merge_lora": config.merge_lora,
            }
        return settings

    @contextlib.contextmanager
    def answering(self, variant: str, suite: dict[str, Dataset]) -> Iterator[Any]:
        """A function `(rows, keys, store) -> records` answering as `variant` (base: the adapter switched off)."""
        if variant == "tuned" and is_full_model(self.config.adapter):
            self._replace_model(self._load(self.config.adapter))
        elif variant == "tuned" and self.config.merge_lora:
            self.model = self.model.merge_and_unload()
        if self.batch_size is None:
            self.batch_size = choose_batch_size(
                self.model, self.base_processor, suite, self.config.max_new_tokens
            )
        adapter_off = (
            self.model.disable_adapter()
            if variant == "base" and isinstance(self.model, PeftModel)
            else contextlib.nullcontext()
        )
        processor = self.processors[variant]
        with adapter_off:
            yield lambda rows, keys, store: generate_records(
                self.model,
                processor,
                rows,
                keys,
                store=store,
                batch_size=self.batch_size,
                max_new_tokens=self.config.max_new_tokens,
            )

    def close(self) -> None:
        """Free the model (the judges may need the accelerator next)."""
        self._replace_model(None)

    # -- internals -----------------------------------------------------------------------------------------

    def _load(self, source: str):
        return load_model(
            source,
            dtype=self.config.dtype,
            attn_implementation=self.config.attn_implementation,
            trust_remote_code=self.config.trust_remote_code,
        ).to(self.state.device)

    def _replace_model(self, model) -> None:
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.model = model

    def _tuned_processor(self):
        """The processor saved with the adapter (its chat template is the trained one), else the base's
        (`vlsafe.hub.tuned_processor`: one that does not fit the base is refused)."""
        config = self.config
        return tuned_processor(
            config.adapter, self.base_processor, base_model=config.base_model, max_pixels=config.max_pixels
        )

    def _attach_adapter(self, model) -> PeftModel:
        """Wrap the base with the adapter (`vlsafe.hub.attach_adapter`); weights that do not fit give a clear
        error."""
        return attach_adapter(model, self.config.adapter, base_model=self.config.base_model)


def choose_batch_size(model, processor, suite: dict[str, Dataset], max_new_tokens: int) -> int:
    """The generation batch size for this machine (`vlsafe.speed.generation_batch_size`), logged."""
    if model.device.type != "cuda":
        batch_size, why = generation_batch_size(model, max_new_tokens, None)
    else:
        longest = max((max(token_lengths(rows, processor), default=0) for rows in suite.values()), default=0)
        free = torch.cuda.mem_get_info(model.device)[0]
        batch_size, why = generation_batch_size(model, longest + max_new_tokens, free)
    logger.info("batch_size = %d (%s); set batch_size to choose another", batch_size, why)
    return batch_size


def prompt_keys(benchmark: str, prompts: Dataset) -> list[str]:
    """The store keys of a benchmark's prompts: benchmark, subset and id (ids are unique within a subset)."""
    return [
        f"{benchmark}/{subset}/{row_id}"
        for subset, row_id in zip(prompts["subset"], prompts["id"], strict=True)
    ]


def generate_suite(
    config: EvaluationConfig, suite: dict[str, Dataset], engine: Any | None = None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{variant: {benchmark: generation records in prompt order}}, resumable and data-parallel, by the engine
    `config.engine` names (or `engine`, one already built)."""
    from vlsafe.evaluation import vllm_engine  # its module imports vLLM only when a VllmEngine is built

    if engine is None:
        engines = {"transformers": TransformersEngine, "vllm": vllm_engine.VllmEngine}
        if config.engine not in engines:
            raise VlsafeError(f"Unknown engine {config.engine!r}; choose one of {sorted(engines)}.")
        engine = engines[config.engine](config)
    folder = Path(config.output_dir) / "generations"
    settings = {  # all checked before any answer: a store of the other engine is refused before the model loads
        (variant, name): engine.settings(variant) | source_settings(config, name)
        for variant in engine.variants
        for name in suite
    }
    if config.resume:  # a store of the other engine: refused, or kept with allow_mixed_engines
        settings = {
            (variant, name): vllm_engine.mixed_engine_settings(
                folder, f"{variant}-{name}", wanted, config.allow_mixed_engines
            )
            for (variant, name), wanted in settings.items()
        }
    generations: dict[str, dict[str, list[dict]]] = {}
    for variant in engine.variants:
        generations[variant] = {}
        with engine.answering(variant, suite) as answer:
            for name, prompts in suite.items():
                rank, resume = engine.state.process_index, config.resume
                store = RecordStore(
                    folder, f"{variant}-{name}", settings[variant, name], rank=rank, resume=resume
                )
                generations[variant][name] = answer(prompts, prompt_keys(name, prompts), store)
        logger.info("Finished generating for %s", variant)
    engine.close()
    return generations


def source_settings(config: EvaluationConfig, benchmark: str) -> dict[str, Any]:
    """What a benchmark's answers depend on besides the model: where its prompts came from."""
    if benchmark == BENIGN:
        return {"benchmark": benchmark, "source": config.benign_prompts, "data_file": config.benign_data_file}
    return {
        "benchmark": benchmark,
        "source": config.dataset or config.benchmark_root,
        "revision": config.dataset_revision,
    }
