"""Publish vlsafe output folders to the Hugging Face Hub, and load published adapters back.

`push_to_hub` sends a folder (a training output: adapter or full weights, processor and tokenizer files, chat
template, card, results.json, plot; or any safetensors model folder, such as a local base model) to a model repo
in one commit, so a revision is either complete or absent. It creates
the repo if needed, honours ``HF_ENDPOINT``, the token (argument, ``HF_TOKEN`` or ``hf auth login``) and a
target branch, retries transient failures, and publishes safetensors only. `load_adapter` loads a published
(or local) adapter onto its base model and returns the processor with it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, get_token, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from peft import PeftModel
from transformers import PreTrainedModel, ProcessorMixin

from vlsafe.cards import ADAPTER_CONFIG, CARD, SUMMARY, is_full_model, looks_like_repo_id, render_adapter_card
from vlsafe.data.sources import hub_file, is_local
from vlsafe.errors import HubAccessError, VlsafeError
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
    message = commit_message or f"Upload {folder.name} with vlsafe"
    size = sum(path.stat().st_size for path in files.values()) / 1e6
    logger.info("Pushing %d files (%.1f MB) from %s to %s", len(files), size, folder, repo_id)
    for attempt in range(1, max_attempts + 1):
        operations = [
            CommitOperationAdd(name, overrides.get(name) or str(files[name]))
            for name in sorted(files.keys() | overrides.keys())
        ]
        try:
            info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
            break
        except Exception as error:
            if not _retryable(error) or attempt == max_attempts:
                raise hub_error(error, repo_id, "push to", write=True, attempts=attempt) from None
            wait = retry_wait * 2 ** (attempt - 1)
            logger.warning(
                "Push to %s failed (%s), attempt %d of %d; retrying in %.0f s",
                repo_id,
                _reason(error),
                attempt,
                max_attempts,
                wait,
            )
            time.sleep(wait)
    logger.info("Pushed %s to %s (commit %s)", folder, info.commit_url, info.oid)
    return PushResult(repo_id, revision or "main", info.oid, info.commit_url)


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


def _status(error: BaseException | None) -> int | None:
    """The HTTP status behind `error` or one of its causes (the client wraps upload errors)."""
    while error is not None:
        response = getattr(error, "response", None)
        if response is not None and getattr(response, "status_code", None):
            return response.status_code
        error = error.__cause__ or error.__context__
    return None


def _retryable(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, httpx2.TransportError | ConnectionError | TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return _status(error) in RETRY_STATUSES


def _reason(error: BaseException) -> str:
    status = _status(error)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"HTTP {status}: {first}" if status else first


def hub_error(
    error: Exception, repo_id: str, action: str, *, write: bool = False, attempts: int | None = None
) -> VlsafeError:
    """One clear message per way a Hub request fails; the token is never part of it.

    `attempts` is set for the commit of a push: its generic failure says that nothing was committed.
    """
    status = _status(error)
    access = "write" if write else "read"
    login = (
        f"Log in with `hf auth login` or set HF_TOKEN to a token with {access} access "
        "(https://huggingface.co/settings/tokens)"
    )
    if status == 401 and not isinstance(error, RepositoryNotFoundError):
        return HubAccessError(
            f"The Hub refused the credentials while trying to {action} {repo_id} (HTTP 401): no token, or an "
            f"invalid or expired one. {login}."
        )
    if status == 403:
        return HubAccessError(
            f"This token may not {action} {repo_id} (HTTP 403). Use a token with {access} access to the namespace "
            f"{repo_id.split('/')[0]!r} (a fine-grained token needs that permission on it), or use your own "
            "namespace."
        )
    if isinstance(error, RevisionNotFoundError):
        return VlsafeError(f"Revision not found while trying to {action} {repo_id}: {_reason(error)}.")
    if isinstance(error, RepositoryNotFoundError):
        return HubAccessError(
            f"Repository {repo_id} was not found, or it is private and this token cannot see it (HTTP {status}). "
            f"Check the id and the token. {login}."
        )
    if isinstance(error, ValueError) and "metadata" in str(error).lower():
        return VlsafeError(f"The Hub rejected the README.md front matter for {repo_id}: {error}")
    if attempts is None:
        return VlsafeError(f"Could not {action} {repo_id}: {_reason(error)}.")
    return VlsafeError(
        f"Could not {action} {repo_id} after {attempts} attempt(s): {_reason(error)}. Nothing was committed; "
        "run the push again (the Hub skips files it already has)."
    )


# -- loading ----------------------------------------------------------------------------------------------------
# What loading an adapter needs from its repo: config, safetensors weights, processor and tokenizer files.
LOADABLE = ["*.json", "*.jinja", "*.txt", "*.model", ADAPTER_WEIGHTS]
NOT_NEEDED = ["results.json", "training_summary.json"]


def load_adapter(
    source: str | Path,
    *,
    base_model: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    dtype: str = "auto",
) -> tuple[PeftModel, ProcessorMixin]:
    """A published (Hub id) or local adapter on its base model, and the processor that goes with it.

    The base is `base_model` or the adapter's ``base_model_name_or_path``. Weights are read from safetensors
    only: a Hub adapter is fetched without its pickle files, and one published as ``.bin`` only is refused.
    The processor (and chat template) comes from the adapter when it ships one, else from the base model.
    """
    folder = adapter_folder(source, revision=revision, token=token)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = base_model or config.get("base_model_name_or_path")
    if not base:
        raise VlsafeError(f"{source}/{ADAPTER_CONFIG} names no base model; pass base_model=<id or folder>.")
    model: PreTrainedModel = load_model(base, revision=config.get("revision"), dtype=dtype)
    peft_model = PeftModel.from_pretrained(model, str(folder))
    peft_model.eval()
    try:
        processor = load_processor(str(folder))
    except (OSError, ValueError):
        logger.warning("%s ships no processor; using the base model's (%s)", source, base)
        processor = load_processor(base, revision=config.get("revision"))
    return peft_model, processor


def adapter_folder(
    source: str | Path, *, revision: str | None = None, token: str | bool | None = None
) -> Path:
    """A local folder holding the adapter of `source` (a folder, or a Hub id fetched into the HF cache),
    checked to hold an adapter config and safetensors weights."""
    if is_local(source):
        folder = Path(source).expanduser()
    elif not looks_like_repo_id(str(source)):
        raise VlsafeError(f"{source} is neither an existing folder nor a Hub repo id (<user-or-org>/<name>).")
    else:  # the config first: its download maps access problems to vlsafe's messages (vlsafe.data.sources)
        config = hub_file(
            str(source), ADAPTER_CONFIG, repo_type="model", revision=revision, token=token, required=False
        )
        if config is None:
            raise VlsafeError(f"{source} has no {ADAPTER_CONFIG}: it is not a PEFT adapter.")
        try:
            folder = Path(
                snapshot_download(
                    str(source),
                    revision=revision,
                    token=token,
                    allow_patterns=LOADABLE,
                    ignore_patterns=NOT_NEEDED,
                )
            )
        except Exception as error:
            raise hub_error(error, str(source), "download the adapter") from None
    if not (folder / ADAPTER_CONFIG).is_file():
        raise VlsafeError(f"{source} has no {ADAPTER_CONFIG}: it is not a PEFT adapter.")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise VlsafeError(
            f"{source} has no {ADAPTER_WEIGHTS}; vlsafe loads safetensors only (pickle .bin weights can run "
            "code when read). Re-save the adapter with save_pretrained(..., safe_serialization=True)."
        )
    return folder
