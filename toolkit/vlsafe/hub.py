"""Publish vlsafe output folders to the Hugging Face Hub, and load published adapters back.

`push_to_hub` sends a folder (a training output: adapter or full weights, processor and tokenizer files, chat
template, card, results.json, plot; or any safetensors model folder, such as a local base model) to a model repo
in one commit, so a revision is either complete or absent. It creates
the repo if needed, honours ``HF_ENDPOINT``, the token (argument, ``HF_TOKEN`` or ``hf auth login``) and a
target branch, retries transient failures, and publishes safetensors only.

Loading is written once, here, for everyone (the evaluation engine, the Space's `compare`, training that continues
an adapter): `attach_adapter` puts a published (Hub id) or local adapter on a model already in memory,
`tuned_processor` finds the processor it was trained with, and `load_adapter` does both from scratch; it also
loads a fully fine-tuned model folder (`vlsafe.cards.is_full_model`) as the model itself.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token
from huggingface_hub.utils import httpx as hub_http  # the HTTP library huggingface_hub itself uses
from peft import PeftModel
from transformers import PreTrainedModel, ProcessorMixin

from vlsafe.cards import (
    ADAPTER_CONFIG,
    CARD,
    MODEL_CONFIG,
    RESULTS,
    SUMMARY,
    is_full_model,
    looks_like_repo_id,
    render_adapter_card,
)
from vlsafe.data.sources import hub_file, hub_snapshot, is_local
from vlsafe.errors import VlsafeError, first_line, http_status, hub_error, reason
from vlsafe.modeling import load_model, load_processor

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Top-level files a published folder may hold; sub-folders (checkpoints, logs) stay local.
PUBLISHED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".md", ".png")
# Pickle-based formats: never published, never loaded (they can run code when read).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class HubTarget:
    """Where a folder goes: repo, visibility if created, branch; the token is used, never shown."""

    repo_id: str
    private: bool = False
    revision: str | None = None
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PushResult:
    """Where a push landed: the full repo id, the branch and the commit."""

    repo_id: str
    revision: str
    commit: str
    url: str


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    base_model_repo: str | None = None,
    commit_message: str | None = None,
    max_attempts: int = 3,
    retry_wait: float = 2.0,
) -> PushResult:
    """Publish `folder` to the model repo `repo_id` in one commit and return where it landed.

    For an adapter, the card is re-rendered with the repo id, and `base_model_repo` (the base model's Hub
    id, when the adapter was trained from a local copy) replaces ``base_model_name_or_path`` in the pushed
    ``adapter_config.json`` so that ``from_pretrained`` can resolve the base; the local folder is not
    changed. Transient failures (5xx, 429, network) are retried `max_attempts` times with exponential waits;
    a failed push commits nothing.
    """
    folder = Path(folder)
    files = publishable_files(folder)
    token = token or get_token()  # resolved once: the same token is used and kept out of published files
    api = HfApi(token=token)
    try:
        repo_id = repo_id if "/" in repo_id else f"{api.whoami()['name']}/{repo_id}"
    except Exception as error:
        raise hub_error(error, repo_id, "find the user namespace for", write=True) from None
    overrides = _adapter_overrides(folder, base_model_repo, repo_id)
    _refuse_token_in_files(files, overrides, token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
    except Exception as error:
        raise hub_error(error, repo_id, "create the repository or branch for", write=True) from None
    size = sum(path.stat().st_size for path in files.values()) / 1e6
    logger.info("Pushing %d files (%.1f MB) from %s to %s", len(files), size, folder, repo_id)
    message = commit_message or f"Upload {folder.name} with vlsafe"
    info = _commit(api, repo_id, files, overrides, message, revision, max_attempts, retry_wait)
    logger.info("Pushed %s to %s (commit %s)", folder, info.commit_url, info.oid)
    return PushResult(repo_id, revision or "main", info.oid, info.commit_url)


def _commit(
    api: HfApi,
    repo_id: str,
    files: dict[str, Path],
    overrides: dict[str, bytes],
    message: str,
    revision: str | None,
    max_attempts: int,
    retry_wait: float,
) -> CommitInfo:
    """One commit of `files` (`overrides` replacing some contents), retried on transient failures (5xx, 429,
    network) with exponential waits; each attempt gets fresh operations (the client marks them as uploaded)."""
    attempt = 1
    while True:
        operations = [
            CommitOperationAdd(name, overrides.get(name) or str(files[name]))
            for name in sorted(files.keys() | overrides.keys())
        ]
        try:
            return api.create_commit(repo_id, operations, commit_message=message, revision=revision)
        except Exception as error:
            if not _retryable(error) or attempt >= max_attempts:
                raise hub_error(error, repo_id, "push to", write=True, attempts=attempt) from None
            wait = retry_wait * 2 ** (attempt - 1)
            logger.warning(
                "Push to %s failed (%s), attempt %d of %d; retrying in %.0f s",
                repo_id,
                reason(error),
                attempt,
                max_attempts,
                wait,
            )
            time.sleep(wait)
            attempt += 1


def push_target(target: HubTarget, folder: str | Path, **kwargs) -> PushResult:
    """`push_to_hub` to a `HubTarget` (what a recipe's ``push_to_hub``/``hub_model_id`` config asks for)."""
    return push_to_hub(
        folder, target.repo_id, token=target.token, private=target.private, revision=target.revision, **kwargs
    )


def publishable_files(folder: Path) -> dict[str, Path]:
    """Repo path -> local file for what `folder` publishes; refuses folders without safetensors weights."""
    if not folder.is_dir():
        raise VlsafeError(f"{folder} is not a folder; pass the training output_dir (or a model folder).")
    top = sorted(path for path in folder.iterdir() if path.is_file())
    pickles = [path.name for path in top if path.suffix in PICKLE_SUFFIXES]
    files = {path.name: path for path in top if path.suffix in PUBLISHED_SUFFIXES}
    if not any(name.endswith(".safetensors") for name in files):
        raise VlsafeError(
            f"{folder} holds no .safetensors weights{f' (only {pickles})' if pickles else ''}; vlsafe publishes "
            "safetensors only. Save with save_pretrained(..., safe_serialization=True) (the default)."
        )
    if pickles:
        logger.info("Not publishing pickle files from %s: %s", folder, ", ".join(pickles))
    return files


def _adapter_overrides(folder: Path, base_model_repo: str | None, repo_id: str) -> dict[str, bytes]:
    """Contents that differ in the pushed copy of an adapter: its config (Hub base id) and its card; of a
    fully fine-tuned vlsafe model (full weights + training summary): its card."""
    config_path = folder / ADAPTER_CONFIG
    if is_full_model(folder) and (folder / SUMMARY).is_file():
        return {CARD: render_adapter_card(folder, repo_id=repo_id, base_model=base_model_repo).encode()}
    if not config_path.is_file():
        return {}
    config = json.loads(config_path.read_text(encoding="utf-8"))
    overrides = {}
    base = config.get("base_model_name_or_path")
    if base_model_repo:
        config["base_model_name_or_path"] = base_model_repo
        overrides[ADAPTER_CONFIG] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    elif not looks_like_repo_id(base):
        logger.warning(
            "%s names its base model by a local path (%s): nobody else can load the pushed adapter. Pass "
            "base_model_repo (CLI: --base_model_repo) with the base model's Hub id, pushing the base first if "
            "it is not on the Hub.",
            config_path,
            base,
        )
    # The card is rendered from the folder as it is, with the ids it will have on the Hub.
    card = render_adapter_card(folder, repo_id=repo_id, base_model=base_model_repo)
    overrides[CARD] = card.encode()
    return overrides


def _refuse_token_in_files(files: dict[str, Path], overrides: dict[str, bytes], token: str | None) -> None:
    """Fail before uploading anything if a file to publish contains the Hub token."""
    if not token:
        return
    for name in sorted(files.keys() | overrides.keys()):
        if name.endswith(".safetensors"):
            continue  # weights: binary tensors with a JSON header vlsafe never puts a token in
        if token.encode() in (overrides.get(name) or files[name].read_bytes()):
            raise VlsafeError(
                f"Refusing to publish: {files.get(name, name)} contains your Hub token. Remove it from the file "
                "(and revoke the token on https://huggingface.co/settings/tokens if it was shared), then push again."
            )


def _retryable(error: BaseException) -> bool:
    """A network failure (anywhere in the causes) or a status the Hub answers when busy or down."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, hub_http.TransportError | ConnectionError | TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return http_status(error) in RETRY_STATUSES


# -- loading ----------------------------------------------------------------------------------------------------
# What loading needs from a repo: configs, safetensors weights (an adapter's, or a full model's), processor and
# tokenizer files. Pickled weights are never fetched.
LOADABLE = ["*.json", "*.jinja", "*.txt", "*.model", ADAPTER_WEIGHTS, "model*.safetensors"]
NOT_NEEDED = [RESULTS, SUMMARY]


def load_adapter(
    source: str | Path,
    *,
    base_model: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    dtype: str = "auto",
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A published (Hub id) or local adapter on its base model, and the processor that goes with it.

    The base is `base_model` or the adapter's ``base_model_name_or_path``. Weights are read from safetensors
    only: a Hub adapter is fetched without its pickle files, and one published as ``.bin`` only is refused.
    The processor (and chat template) comes from the adapter when it ships one, else from the base model. A fully
    fine-tuned model (full weights, no adapter) is loaded as it is, with its own processor.
    """
    folder = model_folder(source, revision=revision, token=token)
    if is_full_model(folder):
        model = load_model(str(folder), dtype=dtype).eval()
        return model, load_processor(str(folder))
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = base_model or _named_base(config, source)
    model = load_model(base, revision=config.get("revision"), dtype=dtype)
    peft_model = attach_adapter(model, folder, base_model=base)
    processor = tuned_processor(
        folder, load_processor(base, revision=config.get("revision")), base_model=base
    )
    return peft_model, processor


def attach_adapter(
    model: PreTrainedModel,
    source: str | Path,
    *,
    base_model: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    trainable: bool = False,
) -> PeftModel:
    """`model` with the LoRA adapter `source` (a folder or a Hub id; safetensors only) on it, in eval mode unless
    `trainable`. `base_model` names `model` in messages: an adapter trained on another base is logged, and one
    whose weights do not fit is refused with the base it was trained on. A fully fine-tuned model folder is not an
    adapter: it is refused with how to load it instead."""
    folder = model_folder(source, revision=revision, token=token)
    if is_full_model(folder):
        raise VlsafeError(
            f"{source} is a fully fine-tuned model (full weights, no {ADAPTER_CONFIG}), not an adapter: load it as "
            "the model itself (vlsafe.load_adapter, or pass it where a model_name_or_path is asked for)."
        )
    trained_on = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get(
        "base_model_name_or_path"
    )
    if base_model and trained_on and trained_on != base_model:
        logger.warning("Adapter %s was trained on %s, put on %s", source, trained_on, base_model)
    try:
        adapted = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as error:
        raise VlsafeError(
            f"Adapter {source} does not fit base model {base_model or 'given'} (it was trained on {trained_on}): "
            f"{first_line(error)[:300]}. Use it with base_model={trained_on}."
        ) from None
    return adapted if trainable else adapted.eval()


def tuned_processor(
    source: str | Path,
    base: ProcessorMixin,
    *,
    base_model: str | None = None,
    max_pixels: int | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> ProcessorMixin:
    """The processor saved with the adapter or fully fine-tuned model `source` (its chat template is the trained
    one), else `base`, the base model's. One of another type or vocabulary than `base` means the model was
    trained on another base: refused, naming it."""
    folder = model_folder(source, revision=revision, token=token)
    try:
        processor = load_processor(str(folder), max_pixels=max_pixels)
    except (OSError, ValueError):
        logger.info("%s ships no processor: using the base model's", source)
        return base
    if type(processor) is not type(base) or len(processor.tokenizer) != len(base.tokenizer):
        adapter = folder / ADAPTER_CONFIG
        trained_on = (
            json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
            if adapter.is_file()
            else "the base model it was fine-tuned from"
        )
        raise VlsafeError(
            f"Adapter {source} was trained with a {type(processor).__name__} of {len(processor.tokenizer)} "
            f"tokens, but base model {base_model or 'given'} has a {type(base).__name__} of {len(base.tokenizer)} "
            f"tokens: the adapter does not fit this base. Use it with the base model it was trained on ({trained_on})."
        )
    return processor


def adapter_base_model(
    source: str | Path, *, revision: str | None = None, token: str | bool | None = None
) -> str:
    """The base model an adapter (folder or Hub id) names in its config; only the config is downloaded."""
    if is_local(source):
        path = Path(source).expanduser() / ADAPTER_CONFIG
        if not path.is_file():
            raise VlsafeError(f"{source} has no {ADAPTER_CONFIG}: it is not a PEFT adapter.")
    else:
        path = _hub_config(source, ADAPTER_CONFIG, revision=revision, token=token)
        if path is None:
            raise VlsafeError(f"{source} has no {ADAPTER_CONFIG}: it is not a PEFT adapter.")
    return _named_base(json.loads(path.read_text(encoding="utf-8")), source)


def model_folder(source: str | Path, *, revision: str | None = None, token: str | bool | None = None) -> Path:
    """A local folder holding the adapter or fully fine-tuned model `source` (a folder, or a Hub id fetched into
    the HF cache without pickles), checked to hold a config and safetensors weights."""
    if is_local(source):
        folder = Path(source).expanduser()
    else:  # a config first: its download maps access problems to vlsafe's messages (vlsafe.errors.hub_error)
        config = _hub_config(source, ADAPTER_CONFIG, revision=revision, token=token)
        if config is None and _hub_config(source, MODEL_CONFIG, revision=revision, token=token) is None:
            raise VlsafeError(f"{source} has no {ADAPTER_CONFIG}: it is not a PEFT adapter (nor a model).")
        patterns = {"allow_patterns": LOADABLE, "ignore_patterns": NOT_NEEDED}
        folder = hub_snapshot(str(source), repo_type="model", revision=revision, token=token, **patterns)
    if is_full_model(folder):
        return folder
    if not (folder / ADAPTER_CONFIG).is_file():
        raise VlsafeError(
            f"{source} has no {ADAPTER_CONFIG}: it is not a PEFT adapter (nor a fully fine-tuned model folder "
            "with config.json and model*.safetensors)."
        )
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise VlsafeError(
            f"{source} has no {ADAPTER_WEIGHTS}; vlsafe loads safetensors only (pickle .bin weights can run "
            "code when read). Re-save the adapter with save_pretrained(..., safe_serialization=True)."
        )
    return folder


def _hub_config(
    source: str | Path, name: str, *, revision: str | None, token: str | bool | None
) -> Path | None:
    """`name` downloaded from the model repo `source`, None when the repo has no such file."""
    if not looks_like_repo_id(str(source)):
        raise VlsafeError(f"{source} is neither an existing folder nor a Hub repo id (<user-or-org>/<name>).")
    return hub_file(str(source), name, repo_type="model", revision=revision, token=token, required=False)


def _named_base(config: dict, source: str | Path) -> str:
    base = config.get("base_model_name_or_path")
    if not base:
        raise VlsafeError(f"{source}/{ADAPTER_CONFIG} names no base model; pass base_model=<id or folder>.")
    return base
