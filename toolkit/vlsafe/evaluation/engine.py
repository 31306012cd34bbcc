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
from peft import PeftConfig, PeftModel

from vlsafe.data.length import token_lengths
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.generate import generate_records, process_state
from vlsafe.evaluation.prompts import BENIGN
from vlsafe.evaluation.store import RecordStore, weights_fingerprint
from vlsafe.modeling import load_model, load_processor
from vlsafe.speed import generation_batch_size

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def is_full_model(source: str | None) -> bool:
    """Whether `source` is a local folder of full model weights (full fine-tuning) rather than a LoRA adapter."""
    folder = Path(source) if source else None
    return bool(folder and folder.is_dir() and not (folder / ADAPTER_CONFIG).is_file())


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
        """The processor saved with the adapter (its chat template is the trained one), else the base's."""
        config, base = self.config, self.base_processor
        try:
            processor = load_processor(config.adapter, max_pixels=config.max_pixels)
        except (OSError, ValueError):
            logger.info("Adapter %s has no processor files: using the base model's", config.adapter)
            return base
        if type(processor) is not type(base) or len(processor.tokenizer) != len(base.tokenizer):
            trained_on = (
                config.adapter
                if is_full_model(config.adapter)
                else PeftConfig.from_pretrained(config.adapter)
            )
            raise VlsafeError(
                f"Adapter {config.adapter} was trained with a {type(processor).__name__} of "
                f"{len(processor.tokenizer)} tokens, but base model {config.base_model} has a "
                f"{type(base).__name__} of {len(base.tokenizer)} tokens: the adapter does not fit this base. "
                "Evaluate it with the base model it was trained on "
                f"({getattr(trained_on, 'base_model_name_or_path', trained_on)})."
            )
        return processor

    def _attach_adapter(self, model) -> PeftModel:
        """Wrap the base with the adapter; weights that do not fit give a clear error."""
        config = self.config
        adapter_base = PeftConfig.from_pretrained(config.adapter).base_model_name_or_path
        if adapter_base and adapter_base != config.base_model:
            logger.warning(
                "Adapter %s was trained on %s, evaluated on %s",
                config.adapter,
                adapter_base,
                config.base_model,
            )
        try:
            return PeftModel.from_pretrained(model, config.adapter)
        except (RuntimeError, ValueError, KeyError) as error:
            raise VlsafeError(
                f"Adapter {config.adapter} does not fit base model {config.base_model} (it was trained on "
                f"{adapter_base}): {str(error).splitlines()[0][:300]}. Evaluate it with base_model={adapter_base}."
            ) from None


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
    config: EvaluationConfig, suite: dict[str, Dataset], engine: TransformersEngine | None = None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{variant: {benchmark: generation records in prompt order}}, resumable and data-parallel."""
    engine = engine or TransformersEngine(config)
    folder = Path(config.output_dir) / "generations"
    generations: dict[str, dict[str, list[dict]]] = {}
    for variant in engine.variants:
        generations[variant] = {}
        with engine.answering(variant, suite) as answer:
            for name, prompts in suite.items():
                store = RecordStore(
                    folder,
                    f"{variant}-{name}",
                    engine.settings(variant) | source_settings(config, name),
                    rank=engine.state.process_index,
                    resume=config.resume,
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
