r"""Publish a training output folder (adapter, processor, card, results) to a Hub model repo, in one commit.

    vlsafe publish --folder outputs/llava-1.5-7b/sft_vlguard --repo_id <user>/llava-1.5-7b-vlguard
    python -m vlsafe.publish --folder outputs/llava-1.5-7b/sft_vlguard --repo_id <user>/llava-1.5-7b-vlguard
    python -m vlsafe.publish --folder outputs/demo/sft_vlguard --repo_id <user>/tiny-vlguard \
        --base_model_repo <user>/tiny-llava --private --revision v1

The token comes from ``hf auth login`` or ``HF_TOKEN`` (never from the command line, where shell history and
process lists would keep it); ``HF_ENDPOINT`` picks another Hub. ``--base_model_repo`` names the base model
by its Hub id in the pushed adapter when it was trained from a local folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import TrlParser

from vlsafe.hub import PushResult, push_to_hub


@dataclass
class PublishArguments:
    """What to publish, and where."""

    folder: str = field(
        metadata={"help": "Output folder of a training run (or any safetensors model folder)."}
    )
    repo_id: str = field(metadata={"help": "Model repo: <user-or-org>/<name> (or <name> in your namespace)."})
    private: bool = field(default=False, metadata={"help": "Create the repo private (if it does not exist)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created if needed)."})
    base_model_repo: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model, written into the pushed adapter_config.json."},
    )
    commit_message: str | None = field(default=None, metadata={"help": "Commit title."})


def make_parser(prog: str | None = None, **kwargs) -> TrlParser:
    """The publish arguments (also `vlsafe publish`'s)."""
    return TrlParser((PublishArguments,), prog=prog, **kwargs)


def main(args: PublishArguments) -> PushResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = push_to_hub(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        base_model_repo=args.base_model_repo,
        commit_message=args.commit_message,
    )
    print(f"Published {args.folder} to {result.repo_id}@{result.revision}: {result.url}")
    return result


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
