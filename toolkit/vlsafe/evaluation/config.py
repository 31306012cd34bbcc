"""Settings of a safety evaluation run (parsed from YAML + CLI by `recipes/evaluate_safety.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvaluationConfig:
    """What to evaluate, on which prompts, judged how."""

    base_model: str = field(metadata={"help": "Base model id or folder."})
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter folder or Hub id; None: base only."}
    )
    evaluate_base: bool = field(
        default=True, metadata={"help": "With an adapter: also evaluate the base (adapter off)."}
    )
    benchmark: list[str] = field(
        default_factory=lambda: ["vlguard"],
        metadata={
            "help": "Benchmarks to run, one or more names (vlguard, mis, figstep, xstest, mmsafetybench, mossbench, "
            "vlsbench, siuo, mssbench, jailbreakv), or `all` with benchmark_root. One run, one report."
        },
    )
    benchmark_root: str | None = field(
        default=None,
        metadata={
            "help": "A folder of benchmark folders, each named as the benchmark (e.g. <root>/figstep, a clone of "
            "its repository): the source of every benchmark run."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "With one benchmark: its Hub dataset id or local folder; default: the benchmark's."
        },
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset."})
    references: str | None = field(
        default=None,
        metadata={
            "help": "Reference answers for the win rate (VLGuard: gpt4_safe_safes.json, the GPT-4V answers the "
            "paper compared against); default: the benchmark's own."
        },
    )
    subsets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Subsets to run (of the one benchmark); default: the benchmarks' default subsets, plus "
            "`benign` with benign_prompts."
        },
    )
    benign_prompts: str | None = field(
        default=None,
        metadata={
            "help": "Safe prompts to run as the extra subset `benign` with any benchmark: a LLaVA/ShareGPT json "
            "file, or a folder with benign_data_file in it (first user turn of each conversation; metric: "
            "over-refusal = refusal rate, and win rate vs its first answer with a model/api judge)."
        },
    )
    benign_data_file: str | None = field(
        default=None, metadata={"help": "json name inside the benign_prompts folder."}
    )
    benign_image_root: str | None = field(
        default=None, metadata={"help": "Folder the benign image paths are relative to; default: the json's."}
    )
    limit: int | None = field(
        default=None, metadata={"help": "Only the first N prompts of each subset (smoke runs)."}
    )
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Prompts generated together per process; unset: 16 on a CPU, on a GPU the most (up to "
            "128) whose KV cache fits in half the free memory (logged)."
        },
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Answer length cap (VLGuard paper: 256)."})
    dtype: str = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2."})
    max_pixels: int | None = field(
        default=None, metadata={"help": "Image resolution cap (Qwen-VL processors)."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Merge the LoRA into the weights for the tuned run (faster)."}
    )
    judges: list[str] = field(
        default_factory=lambda: ["keyword"],
        metadata={
            "help": "keyword (vlsafe's refusal detector), vlguard_keyword (VLGuard's 2024 list), xstest_strmatch "
            "(XSTest's prefix rule), model (a chat VLM asked vlsafe's judge prompt), llama_guard (Llama Guard "
            "3 Vision / 4 in its own format), api (an OpenAI-compatible endpoint)."
        },
    )
    judge_model: str | None = field(default=None, metadata={"help": "Local judge VLM for the `model` judge."})
    guard_model: str | None = field(
        default=None, metadata={"help": "Llama Guard checkpoint for the `llama_guard` judge."}
    )
    judge_batch_size: int = field(default=8, metadata={"help": "Batch size of the `model` and `llama_guard` judges."})
    judge_api_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible base URL, e.g. .../v1."}
    )
    judge_api_model: str | None = field(default=None, metadata={"help": "Model name at the API endpoint."})
    judge_api_key_env: str | None = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Environment variable holding the API key (None: no key)."},
    )
    output_dir: str = field(
        default="outputs/eval", metadata={"help": "Where results.json, the plot and progress go."}
    )
    resume: bool = field(
        default=True, metadata={"help": "Continue from finished generations/judgements in output_dir."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the Hub (off: safer)."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.benchmark, str):  # a YAML config may name one benchmark as a plain string
            self.benchmark = [self.benchmark]
        if isinstance(self.judges, str):
            self.judges = [self.judges]
