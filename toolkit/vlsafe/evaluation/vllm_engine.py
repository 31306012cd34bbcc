"""vLLM generation (`--engine vllm`, extra `vllm`). `VllmGenerator` is one vLLM engine holding a model's weights,
with a LoRA adapter applied to the requests that ask for it (`LoRARequest`); the evaluation's generation stage
(`VllmEngine`: base answers without the adapter, tuned answers with it, from the same engine), DPO's on-policy pair
generation and the model judge run on it.

What makes its answers comparable to the transformers engine's (`vlsafe.evaluation.generate`):
- the same prompt text: vlsafe renders the chat template with the processor (the adapter's for tuned) over the
  messages the transformers engine sends and hands vLLM the text plus the images, never letting vLLM apply a
  template of its own; the special-token rule of transformers' `apply_chat_template` is mirrored, and on probe
  prompts the token ids vLLM used are checked against the processor's;
- greedy decoding with the model's generation settings (e.g. a repetition penalty in generation_config.json, which
  `generate` applies too), the same `max_new_tokens`, and the records built from the generated token ids by the
  transformers engine's own rules (`answer_record`).
And what keeps a "tuned" result from silently being the base model's:
- `check_adapter` refuses an adapter vLLM would not apply in full (LoRA outside the language model's attention and
  MLP projections, modules_to_save, DoRA, biases, other PEFT methods, a rank above vLLM's largest), before
  anything loads;
- at start-up, on a few of the prompts, the first-token distribution with the adapter must differ from the one
  without it (`VllmGenerator.check_adapter_applied`; evaluation and DPO's pairs).

Data parallelism: under `accelerate launch` each process runs its own engine on its own GPU(s)
(`tensor_parallel_size` each), as vLLM's offline data-parallel example does, and the prompts are split as with the
transformers engine; every process probes its own engine's adapter. On vLLM's CPU build the processes share the
cores (no speed-up there; what the tests use to check the data-parallel path).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from safetensors import safe_open
from transformers import AutoConfig, GenerationConfig, ProcessorMixin
from transformers.image_utils import load_image

from vlsafe.cards import ADAPTER_CONFIG
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.benchmarks.base import image_paths
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.engine import TransformersEngine, is_full_model
from vlsafe.evaluation.generate import (
    answer_record,
    defused_prompts,
    process_state,
    prompt_messages,
    records_in_order,
)
from vlsafe.evaluation.store import RecordStore
from vlsafe.hub import ADAPTER_WEIGHTS, model_folder, tuned_processor
from vlsafe.modeling import LM_HEAD, LM_LINEAR_LAYERS, Family, family_of, load_processor, model_part

logger = logging.getLogger(__name__)

# vLLM's allowed max_lora_rank values (vllm.config.lora.MaxLoRARanks, 0.32-0.33).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# PEFT init methods that change the base weights when the adapter loads: vLLM refuses them (PEFTHelper).
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")
PROBE_PROMPTS = 4
PROBE_LOGPROBS = 20  # vLLM's default max_logprobs
# A dropped adapter leaves the probe's log-probabilities bit-for-bit equal (same batch, same kernels: measured 0);
# an applied one moves them far more (the tiny fixtures' random adapters change the top first token outright).
PROBE_TOLERANCE = 1e-3
CHUNK = 1024  # prompts handed to vLLM per call unless batch_size says otherwise; stored after each call


@dataclass(frozen=True)
class VllmAdapter:
    """A LoRA adapter vLLM can apply in full: its local folder and the max_lora_rank it needs."""

    folder: Path
    rank: int
    max_lora_rank: int
    has_weights: bool  # False: every lora_B is zero (an untrained adapter: tuned answers equal the base's)


def check_adapter(adapter: str | Path, base_model: str, *, trust_remote_code: bool = False) -> VllmAdapter:
    """The adapter, checked to be one vLLM applies in full on `base_model`; else a VlsafeError naming what vLLM
    would ignore or refuse and what to do (vLLM itself only logs that it skips such modules)."""
    folder = model_folder(adapter)
    if is_full_model(str(folder)):
        raise VlsafeError(
            f"{adapter} is a fully fine-tuned model, not a LoRA adapter: the vLLM engine applies adapters to its "
            "base model. Evaluate it with --engine transformers."
        )
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    problems = _unsupported_features(config)
    rank = max([int(config.get("r", 0)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])
    if rank > VLLM_LORA_RANKS[-1]:
        problems.append(f"rank {rank} is above vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]})")
    family = family_of(AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code).model_type)
    with safe_open(folder / ADAPTER_WEIGHTS, framework="pt") as weights:
        names = list(weights.keys())
        has_weights = any(
            bool(weights.get_tensor(name).any()) for name in names if name.endswith("lora_B.weight")
        )
    problems += _unapplied_modules(names, family)
    if problems:
        raise VlsafeError(
            f"vLLM cannot apply adapter {adapter} as PEFT does: {'; '.join(problems)}. Its tuned answers would "
            "not be the tuned model's. Evaluate it with --engine transformers (or retrain with vlsafe's default "
            "LoRA targets: the language model's attention and MLP projections)."
        )
    if not has_weights:
        logger.warning("Adapter %s has all-zero lora_B weights: its answers will equal the base's", adapter)
    max_rank = next(allowed for allowed in VLLM_LORA_RANKS if allowed >= rank)
    return VllmAdapter(folder, rank, max_rank, has_weights)


def _unsupported_features(config: dict[str, Any]) -> list[str]:
    """PEFT settings of an adapter that vLLM does not implement (it refuses some, ignores others)."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"it is a {config['peft_type']} adapter, not LoRA")
    if config.get("use_dora"):
        problems.append("it uses DoRA (use_dora)")
    if config.get("modules_to_save"):
        problems.append(f"it trains whole modules (modules_to_save={config['modules_to_save']})")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("it trains biases (bias / lora_bias)")
    if config.get("trainable_token_indices"):
        problems.append("it trains token embeddings (trainable_token_indices)")
    if config.get("layer_replication") or config.get("alora_invocation_tokens"):
        problems.append("it uses layer_replication or activated LoRA")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        problems.append(f"init_lora_weights={init!r} changes the base weights when PEFT loads it")
    return problems


def _unapplied_modules(weight_names: Sequence[str], family: Family) -> list[str]:
    """Which LoRA weights vLLM would leave out: anything but LoRA A/B on the language model's linear layers
    (vLLM wraps only those by default, and skips the others with a log line)."""
    outside: dict[str, set[str]] = {}
    for name in weight_names:
        module, _, kind = name.rpartition(".lora_")
        module = module.removeprefix("base_model.model.")
        layer = module.rsplit(".", 1)[-1]
        part = model_part(family, module)
        if kind not in ("A.weight", "B.weight"):
            where = "weights other than LoRA A/B (DoRA magnitudes, embedding LoRA, trainable tokens)"
        elif layer == LM_HEAD:
            where = "the output layer (lm_head)"
        elif part != "language_model":
            where = (
                f"the {part.replace('_', ' ')}" if part != "other" else "modules outside the model's parts"
            )
        elif layer not in LM_LINEAR_LAYERS:
            where = "language-model modules other than the attention and MLP projections"
        else:
            continue
        outside.setdefault(where, set()).add(module or name)
    return [
        f"LoRA on {where} ({len(modules)} modules, e.g. {min(modules)})" for where, modules in outside.items()
    ]


def vllm_prompt(processor: ProcessorMixin, row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row as a vLLM prompt (the chat template rendered by `processor` over the messages the transformers engine
    sends, spelled-out media placeholders defused; images as multi_modal_data) and the tokenization settings that give the token ids transformers' `apply_chat_template(tokenize=True)` gives."""
    (messages,) = defused_prompts(processor, [prompt_messages(row)])
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Image paths (the judges' items) opened as the processor opens them: vLLM takes decoded images only.
    images = [load_image(str(i)) if isinstance(i, (str, Path)) else i for i in row.get("images") or []]
    prompt = {"prompt": text, "multi_modal_data": {"image": images}} if images else {"prompt": text}
    bos = processor.tokenizer.bos_token
    # transformers adds no special tokens when the rendered template already starts with BOS: nor does vLLM then.
    tokenization = {"add_special_tokens": False} if bos is not None and text.startswith(bos) else {}
    return prompt, tokenization


def processor_token_ids(processor: ProcessorMixin, row: dict[str, Any]) -> list[int]:
    """The prompt token ids the transformers engine feeds the model for `row` (images expanded)."""
    messages = defused_prompts(processor, [prompt_messages(row)])
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(inputs["input_ids"][0])


def images_per_prompt(suite: dict[str, Dataset]) -> int:
    """The most images any prompt of the suite has (vLLM's limit_mm_per_prompt), counted without decoding."""
    return max((len(paths) for prompts in suite.values() for paths in image_paths(prompts)), default=0)


def mixed_engine_settings(
    folder: Path, name: str, settings: dict[str, Any], allow_mixed_engines: bool
) -> dict[str, Any]:
    """The settings to open the answer store `name` with. A store another engine made with otherwise the same
    settings is refused with a clear message, or with `allow_mixed_engines` kept (its header is adopted, so only
    its missing answers are generated, by this engine)."""
    wanted = json.loads(json.dumps(settings, default=str))
    for shard in sorted(Path(folder).glob(f"{name}.rank*.jsonl")):
        with shard.open(encoding="utf-8") as handle:
            try:
                stored = json.loads(handle.readline()).get("header") or {}
            except json.JSONDecodeError:
                continue
        other = stored.get("engine")
        if other in (None, wanted.get("engine")) or {**stored, "engine": wanted.get("engine")} != wanted:
            continue  # same engine, or other differences too: RecordStore decides (and explains)
        if not allow_mixed_engines:
            raise VlsafeError(
                f"{shard} holds answers generated by the {other} engine; this run uses the {wanted['engine']} "
                "engine. Greedy answers of two engines can differ where two tokens are nearly tied, so they are "
                "not mixed by default. Use a fresh output_dir or --resume false to regenerate, "
                f"--engine {other} to continue as before, or --allow_mixed_engines true to keep them and generate "
                f"only the missing answers with {wanted['engine']}."
            )
        logger.warning(
            "%s: keeping answers generated by the %s engine (allow_mixed_engines); missing ones come from %s",
            name,
            other,
            wanted["engine"],
        )
        return stored
    return settings


def require_vllm() -> None:
    """A clear error where the optional vLLM extra is not installed."""
    try:
        import vllm  # noqa: F401  (optional extra)
    except ImportError:
        raise VlsafeError(
            "The vLLM engine needs vLLM: pip install 'vlsafe[vllm]' on a GPU machine (make vllm-env builds a CPU "
            "environment, .venv-vllm), or use the transformers engine."
        ) from None


@dataclass(frozen=True)
class VllmSettings:
    """How an engine is laid out on the accelerators (the `vllm` options of evaluation, DPO and the judge)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None


class VllmGenerator:
    """Greedy generation on one vLLM engine holding `model`'s weights, with `adapter` (if any) applied to the
    requests asked for it: what the evaluation engine, DPO's on-policy pairs and the model judge share.

    Answers follow the transformers engine's rules (`vlsafe.evaluation.generate`): the prompt text vlsafe renders,
    greedy decoding with the model's own generation settings, the same `max_new_tokens`, the records built from
    the generated token ids by `answer_record`. Data-parallel under `accelerate launch`: every process starts an
    engine on its own `tensor_parallel_size` GPUs and answers its share of the prompts."""

    def __init__(
        self,
        model: str,
        *,
        max_new_tokens: int,
        images_per_prompt: int,
        adapter: VllmAdapter | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        layout: VllmSettings | None = None,
        max_pixels: int | None = None,
        batch_size: int | None = None,
    ):
        require_vllm()
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.state = process_state()
        layout = layout or VllmSettings()
        self.adapter, self.chunk, self.images_per_prompt = adapter, batch_size or CHUNK, images_per_prompt
        generation = _generation_config(model, trust_remote_code)
        eos = generation.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad = generation.pad_token_id
        kwargs = {
            "model": model,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": layout.tensor_parallel_size,
            "gpu_memory_utilization": layout.gpu_memory_utilization,
            "max_model_len": layout.max_model_len,
            "limit_mm_per_prompt": {"image": images_per_prompt},
            "enforce_eager": not torch.cuda.is_available(),  # CPU: no graphs to capture, no compile wait
            "seed": 0,
        }
        if max_pixels is not None:
            kwargs["mm_processor_kwargs"] = {"max_pixels": max_pixels}
        if adapter is not None:
            kwargs |= {"enable_lora": True, "max_lora_rank": adapter.max_lora_rank, "max_loras": 1}
        logger.info(
            "Starting vLLM on %s (tensor_parallel_size %d, %d image(s) per prompt at most)",
            model,
            layout.tensor_parallel_size,
            images_per_prompt,
        )
        with _pinned_devices(self.state, layout.tensor_parallel_size):
            self.llm = LLM(**kwargs)
        self.lora_request = None
        if adapter is not None:
            _validate_with_vllm(adapter, self.llm)
            self.lora_request = LoRARequest("tuned", 1, str(adapter.folder))
        self.sampling = self._sampling(max_new_tokens)

    def records(
        self,
        rows,
        keys,
        store: RecordStore | None,
        processor: ProcessorMixin,
        *,
        tuned: bool = False,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Generation records for `rows` in their order (tuned: with the adapter); rows in `store` are not
        generated again, each call's answers are stored as it returns."""
        lora = self.lora_request if tuned else None

        def generate(share: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
            for start in range(0, len(share), self.chunk):
                batch = share[start : start + self.chunk]
                outputs = self.generate([rows[i] for i in batch], processor, lora, self.sampling, progress)
                for index, output in zip(batch, outputs, strict=True):
                    yield index, answer_record(output.outputs[0].token_ids, processor, self.eos, self.pad)

        return records_in_order(keys, store, generate)

    def answers(self, rows, processor: ProcessorMixin, *, tuned: bool = False) -> list[str]:
        """Greedy answers to `rows`, in order, nothing stored."""
        keys = [str(index) for index in range(len(rows))]
        return [record["generation"] for record in self.records(rows, keys, None, processor, tuned=tuned)]

    def generate(self, rows, processor, lora, sampling, progress: bool = True) -> list[Any]:
        """vLLM outputs for `rows`, in order. Prompts whose rendered template starts with BOS are tokenized
        without special tokens (as transformers does), so they go in a call of their own. Base and tuned requests
        are never batched together: vLLM's CPU LoRA kernels apply the adapter to base requests in a mixed batch
        (vllm-project/vllm#48421, open)."""
        prompts = [vllm_prompt(processor, row) for row in rows]
        outputs: list[Any] = [None] * len(rows)
        for tokenization in ({}, {"add_special_tokens": False}):
            group = [i for i, (_, kwargs) in enumerate(prompts) if kwargs == tokenization]
            if group:
                done = self.llm.generate(
                    [prompts[i][0] for i in group],
                    sampling,
                    lora_request=lora,
                    tokenization_kwargs=tokenization or None,
                    use_tqdm=progress and self.state.is_local_main_process,
                )
                for i, output in zip(group, done, strict=True):
                    outputs[i] = output
        return outputs

    def first_token_logprobs(self, rows, processor, lora) -> list[dict[int, float]]:
        """First-token log-probabilities (top PROBE_LOGPROBS) for `rows`, after checking that vLLM's prompt
        token ids are the transformers processor's."""
        from vllm import SamplingParams

        probe = SamplingParams(temperature=0.0, max_tokens=1, logprobs=PROBE_LOGPROBS, detokenize=False)
        outputs = self.generate(rows, processor, lora, probe, progress=False)
        for row, output in zip(rows, outputs, strict=True):
            expected, used = processor_token_ids(processor, row), list(output.prompt_token_ids)
            if used != expected:
                at = next(
                    (i for i, (a, b) in enumerate(zip(expected, used, strict=False)) if a != b),
                    min(len(expected), len(used)),
                )
                raise VlsafeError(
                    f"vLLM tokenized prompt {row.get('id')!r} differently from the transformers processor "
                    f"({len(used)} vs {len(expected)} tokens, first difference at token {at}): its answers would "
                    "not be comparable. Use the transformers engine for this model."
                )
        return [
            {token: lp.logprob for token, lp in output.outputs[0].logprobs[0].items()} for output in outputs
        ]

    def check_adapter_applied(self, rows, base_processor, tuned_processor, lora_request) -> None:
        """Refuse to go on unless vLLM's prompt token ids equal the transformers processors' for `rows`, and
        `lora_request` (the adapter's) changes the first-token distribution of at least one of them (unless the
        adapter's weights are zero): a tuned run that is silently the base model's stops here."""
        base = self.first_token_logprobs(rows, base_processor, None)
        tuned = self.first_token_logprobs(rows, tuned_processor, lora_request)
        changes = [_distribution_change(b, t) for b, t in zip(base, tuned, strict=True)]
        moved = max(changes)
        kept = [change for change in changes if change != float("inf")]
        logger.info(
            "Adapter check: with the adapter the top first token or the top-%d list changes on %d of %d probe "
            "prompts%s",
            PROBE_LOGPROBS,
            len(changes) - len(kept),
            len(changes),
            f"; on the others the log-probabilities move by up to {max(kept):.3g}" if kept else "",
        )
        if moved <= PROBE_TOLERANCE and self.adapter.has_weights:
            raise VlsafeError(
                f"vLLM's answers with adapter {self.adapter.folder} are the base model's (first-token "
                f"log-probabilities on {len(rows)} probe prompts moved by {moved:.2g} at most), although its "
                "weights are non-zero: vLLM is not applying it. Use the transformers engine, and check that the "
                "adapter's modules exist in vLLM's model for this architecture."
            )

    def close(self) -> None:
        """Shut the engine down and free its memory (training or the judges may need the accelerator next)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sampling(self, max_new_tokens: int):
        """Greedy decoding; the model's own generation settings that `generate` applies too (a repetition
        penalty, say) are kept, the sampling ones switched off."""
        from vllm import SamplingParams

        defaults = self.llm.llm_engine.model_config.get_diff_sampling_param()
        kept = {key: defaults[key] for key in ("repetition_penalty",) if key in defaults}
        if kept:
            logger.info("Generation settings from the model's generation_config.json: %s", kept)
        return SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            stop_token_ids=sorted(self.eos),
            detokenize=False,  # decoded by the processor, as the transformers engine does
            **kept,
        )


class VllmEngine:
    """The evaluation's generation stage on vLLM: base and adapter in one engine, the adapter applied per
    request."""

    name = "vllm"

    def __init__(self, config: EvaluationConfig):
        _check_config(config)
        require_vllm()
        self.config = config
        self.state = process_state()
        self.base_processor = load_processor(config.base_model, max_pixels=config.max_pixels)
        self.processors: dict[str, ProcessorMixin] = {}
        if config.adapter is None or config.evaluate_base:
            self.processors["base"] = self.base_processor
        self.adapter = None
        if config.adapter is not None:
            self.adapter = check_adapter(
                config.adapter, config.base_model, trust_remote_code=config.trust_remote_code
            )
            self.processors["tuned"] = tuned_processor(
                config.adapter,
                self.base_processor,
                base_model=config.base_model,
                max_pixels=config.max_pixels,
            )
        self.generator: VllmGenerator | None = None

    @property
    def variants(self) -> list[str]:
        return list(self.processors)

    def settings(self, variant: str) -> dict[str, Any]:
        """What the answers of `variant` depend on: the transformers engine's settings with this engine's name,
        so a store of one engine is recognised (and by default refused) by the other."""
        return TransformersEngine.settings(self, variant)

    @contextlib.contextmanager
    def answering(self, variant: str, suite: dict[str, Dataset]) -> Iterator[Any]:
        """A function `(rows, keys, store) -> records` answering as `variant` (tuned: with the adapter's
        LoRARequest). The engine starts on first use: its image limit comes from the suite."""
        if self.generator is None:
            config = self.config
            self.generator = VllmGenerator(
                config.base_model,
                max_new_tokens=config.max_new_tokens,
                images_per_prompt=images_per_prompt(suite),
                adapter=self.adapter,
                dtype=config.dtype,
                trust_remote_code=config.trust_remote_code,
                layout=vllm_settings(config),
                max_pixels=config.max_pixels,
                batch_size=config.batch_size,
            )
            if self.adapter is not None:
                self.check_adapter_applied(_probe_rows(suite), self.generator.lora_request)
        processor, tuned = self.processors[variant], variant == "tuned"
        yield lambda rows, keys, store: self.generator.records(rows, keys, store, processor, tuned=tuned)

    def check_adapter_applied(self, rows: list[dict[str, Any]], lora_request) -> None:
        """The generator's adapter check on `rows` (base: the base processor, tuned: the adapter's)."""
        self.generator.check_adapter_applied(
            rows, self.base_processor, self.processors["tuned"], lora_request
        )

    def close(self) -> None:
        """Shut the engine down and free its memory (the judges may need the accelerator next)."""
        if self.generator is not None:
            self.generator.close()
        self.generator = None


def vllm_settings(config: Any) -> VllmSettings:
    """The engine layout named by a config's `tensor_parallel_size`, `gpu_memory_utilization`, `max_model_len`."""
    return VllmSettings(config.tensor_parallel_size, config.gpu_memory_utilization, config.max_model_len)


def _distribution_change(base: dict[int, float], tuned: dict[int, float]) -> float:
    """How far two top-k first-token distributions are apart: infinite if their top tokens or their top-k lists
    differ, else the largest log-probability change of a listed token."""
    if max(base, key=base.get) != max(tuned, key=tuned.get) or base.keys() != tuned.keys():
        return float("inf")
    return max(abs(base[token] - tuned[token]) for token in base)


def _probe_rows(suite: dict[str, Dataset]) -> list[dict[str, Any]]:
    """The first PROBE_PROMPTS prompts of the suite, across its benchmarks in order."""
    rows = []
    for prompts in suite.values():
        rows += [prompts[i] for i in range(min(PROBE_PROMPTS - len(rows), len(prompts)))]
    return rows


def _check_config(config: EvaluationConfig) -> None:
    """Refuse settings the vLLM engine cannot honour, naming the alternative."""
    if config.merge_lora:
        raise VlsafeError(
            "merge_lora is for the transformers engine: vLLM applies the adapter per request. Drop --merge_lora."
        )
    if config.adapter is not None and is_full_model(config.adapter):
        raise VlsafeError(
            f"{config.adapter} is a fully fine-tuned model: the vLLM engine evaluates LoRA adapters on their base. "
            "Evaluate it with --engine transformers."
        )
    check_max_pixels(config.base_model, config.max_pixels)
    if config.attn_implementation:
        logger.info(
            "attn_implementation=%s is a transformers setting: vLLM chooses its own",
            config.attn_implementation,
        )


def check_max_pixels(model: str, max_pixels: int | None) -> None:
    """vLLM passes max_pixels to Qwen-VL processors only: refuse it for other models."""
    if max_pixels is None:
        return
    image_processor = getattr(load_processor(model), "image_processor", None)
    if not hasattr(image_processor, "merge_size"):  # Qwen-VL processors take max_pixels as an argument
        raise VlsafeError(
            "With the vLLM engine, max_pixels applies to Qwen-VL models only (vLLM passes it to their "
            f"processor), not {type(image_processor).__name__}. Drop max_pixels or use the transformers engine."
        )


def _generation_config(model: str, trust_remote_code: bool) -> GenerationConfig:
    """The model's generation config (end-of-sequence and pad ids), as transformers loads it."""
    try:
        return GenerationConfig.from_pretrained(model)
    except OSError:
        model_config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        return GenerationConfig.from_model_config(model_config)


@contextlib.contextmanager
def _pinned_devices(state, tensor_parallel_size: int) -> Iterator[None]:
    """Data parallelism: this process's engine gets its own `tensor_parallel_size` GPUs while it starts (vLLM's
    engine processes read CUDA_VISIBLE_DEVICES then); restored afterwards for training or judging. On a CPU there is
    nothing to pin."""
    if state.num_processes == 1 or not torch.cuda.is_available():
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = (before or ",".join(map(str, range(torch.cuda.device_count())))).split(",")
    start = state.local_process_index * tensor_parallel_size
    mine = devices[start : start + tensor_parallel_size]
    if len(mine) < tensor_parallel_size:
        raise VlsafeError(
            f"{state.num_processes} processes x tensor_parallel_size {tensor_parallel_size} need "
            f"{state.num_processes * tensor_parallel_size} GPUs; {len(devices)} are visible."
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _validate_with_vllm(adapter: VllmAdapter, llm) -> None:
    """vLLM's own adapter rules (PEFTHelper.validate_legal), as a clear error before any answer."""
    from vllm.lora.peft_helper import PEFTHelper

    lora_config = llm.llm_engine.vllm_config.lora_config
    try:
        PEFTHelper.from_local_dir(str(adapter.folder), None).validate_legal(lora_config)
    except ValueError as error:
        raise VlsafeError(f"vLLM refuses adapter {adapter.folder}: {error}") from None
