"""Push the compare demo (spaces/compare) to a Hugging Face Space that serves one safety adapter.

    python spaces/push_space.py --space_id <user>/vlsafe-compare --adapter <user>/<adapter-repo> \
        [--base_model llava-hf/llava-1.5-7b-hf] [--private] [--max_new_tokens 256]
    python spaces/push_space.py --space_id ... --adapter ... --stage_dir /tmp/space   # write the folder only

The Space folder is self-contained: app.py and gallery.py, README.md with the base model and adapter
in its `models` front matter, requirements.txt (vlsafe's runtime dependencies; gradio comes with the
Space's `sdk_version`), compare_config.json (adapter and base model: the app's defaults), and a copy of
the `vlsafe` package next to app.py, so the Space runs this checkout's code without vlsafe on PyPI.
Everything goes up in one commit. Authentication is huggingface_hub's (`hf auth login` or HF_TOKEN).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, SpaceCard
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from trl import TrlParser

import vlsafe
from vlsafe.errors import VlsafeError, hub_error
from vlsafe.hub import adapter_base_model

logger = logging.getLogger("vlsafe.spaces.push")

SPACE_DIR = Path(__file__).resolve().parent / "compare"
SPACE_FILES = ("app.py", "gallery.py", "README.md", "requirements.txt")
CONFIG_FILE = "compare_config.json"


@dataclass
class PushArguments:
    """Where to push the Space and what it serves."""

    space_id: str = field(metadata={"help": "Space repo id, e.g. <user>/vlsafe-compare."})
    adapter: str = field(metadata={"help": "Hub id of the LoRA safety adapter the Space serves."})
    base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the base model; default: the adapter's base model."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Space private."})
    max_new_tokens: int = field(default=256, metadata={"help": "Answer length cap in the Space."})
    stage_dir: str | None = field(
        default=None, metadata={"help": "Only write the Space folder here; push nothing."}
    )


def _hub_id(value: str, what: str) -> str:
    """`value` if it is a Hub repo id (not a local folder), else a clear error."""
    if Path(value).exists():
        raise VlsafeError(
            f"The {what} {value!r} is a local folder; a Space loads from the Hub. Push it first and pass its repo id."
        )
    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        raise VlsafeError(f"The {what} {value!r} is not a Hub repo id: {exc}") from None
    return value


def resolve_base_model(adapter: str, base_model: str | None) -> str:
    """The base model to serve: given, or the one named in the adapter's adapter_config.json."""
    if base_model is None:
        base_model = adapter_base_model(adapter)
        logger.info("Base model from the adapter's config: %s", base_model)
    return _hub_id(base_model, "base model")


def stage_space(
    out_dir: str | Path, *, space_id: str, adapter: str, base_model: str, max_new_tokens: int
) -> Path:
    """Write the Space folder for `adapter` on `base_model` into `out_dir`, a new or empty folder."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise VlsafeError(f"{out} is not empty; stage the Space into a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copy2(SPACE_DIR / name, out / name)
    package = Path(vlsafe.__file__).resolve().parent
    shutil.copytree(package, out / "vlsafe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    config = {"adapter": adapter, "base_model": base_model, "max_new_tokens": max_new_tokens}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    card = SpaceCard.load(out / "README.md")
    card.data.models = [base_model, adapter]
    card.text = card.text.replace("<space-id>", space_id)
    card.save(out / "README.md")
    return out


def push_space(args: PushArguments, api: HfApi | None = None) -> str:
    """Create (or update) the Space and upload its folder in one commit; returns the Space URL."""
    space_id = _hub_id(args.space_id, "Space id")
    adapter = _hub_id(args.adapter, "adapter")
    api = api or HfApi()
    try:
        info = api.model_info(adapter)
    except RepositoryNotFoundError:
        raise VlsafeError(
            f"The adapter {adapter!r} is not on the Hub (or your token cannot see it): push it first."
        ) from None
    except HfHubHTTPError as error:
        raise hub_error(error, adapter, "read") from None
    if info.private:
        logger.warning("%s is private: give the Space an HF_TOKEN secret that can read it.", adapter)
    base_model = resolve_base_model(adapter, args.base_model)
    try:
        url = api.create_repo(
            space_id, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True
        )
        with tempfile.TemporaryDirectory(prefix="vlsafe-space-") as tmp:
            folder = stage_space(
                Path(tmp) / "space",
                space_id=space_id,
                adapter=adapter,
                base_model=base_model,
                max_new_tokens=args.max_new_tokens,
            )
            api.upload_folder(
                repo_id=space_id,
                repo_type="space",
                folder_path=folder,
                commit_message=f"vlsafe compare demo for {adapter}",
                delete_patterns=["vlsafe/**"],  # modules of an earlier push this checkout no longer has
            )
    except HfHubHTTPError as error:  # the message names the status, never the token
        raise hub_error(
            error, space_id, "create or update the Space", repo_type="space", write=True
        ) from None
    logger.info("Pushed %s", url)
    return str(url)


def main(args: PushArguments) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.stage_dir:
            _hub_id(args.space_id, "Space id")
            adapter = _hub_id(args.adapter, "adapter")
            base_model = resolve_base_model(adapter, args.base_model)
            folder = stage_space(
                args.stage_dir,
                space_id=args.space_id,
                adapter=adapter,
                base_model=base_model,
                max_new_tokens=args.max_new_tokens,
            )
            logger.info("Wrote the Space folder to %s (nothing pushed)", folder)
        else:
            push_space(args)
    except VlsafeError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    (arguments,) = TrlParser((PushArguments,)).parse_args_and_config()
    main(arguments)
