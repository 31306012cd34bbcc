"""The `vlsafe` command: the recipes, the pipeline, publishing, the Space, the embedded default and the environment
behind one entry point (modelled on `trl`'s: a training command parses its recipe's arguments, then launches the
recipe's script through `accelerate launch`, passing every option the recipe does not know to accelerate).

    vlsafe sft-vlguard --config qwen2.5-vl-7b --accelerate_config multi_gpu --num_processes 8
    vlsafe sft-mis --config internvl3-8b          vlsafe dpo --config llava-1.5-7b
    vlsafe eval --config tiny                      vlsafe eval --base_model <id> --adapter <folder> --benchmark xstest
    vlsafe run --config tiny [--repo_id <user>/<name> --base_model_repo <user>/<base> --space_id <user>/<space>]
    vlsafe publish --folder outputs/demo/sft_vlguard --repo_id <user>/tiny-vlguard
    vlsafe space [--adapter <folder or id>]        vlsafe space --push --space_id <user>/<space> --adapter <id>
    vlsafe fixtures --out outputs/demo/fixtures    vlsafe env

`--config <name>` resolves to the packaged config of that recipe (recipes/configs/<name>/<recipe>.yaml, shipped
in the wheel), a path to that file. The command is thin: everything it runs is the recipes' and the library's.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import subprocess
import sys
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from vlsafe import recipes
from vlsafe.errors import VlsafeError

logger = logging.getLogger(__name__)

PROG = "vlsafe"
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "gradio")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, and descriptions printed as written."""


def recipe_help(recipe: str) -> dict[str, object]:
    """The description and epilog of a recipe command's --help: its docstring, how configs and accelerate
    options are passed."""
    module = importlib.import_module(f"vlsafe.recipes.{recipe}")
    names = recipes.config_names(recipe)
    epilog = (
        f"--config NAME_OR_PATH: a YAML file, or a packaged config name ({', '.join(names) or 'none'}), i.e. "
        f"recipes/configs/<name>/{recipe}.yaml. Options on the command line override the config."
    )
    if recipe in recipes.TRAINING_RECIPES:
        epilog += (
            "\n\nLaunched through `accelerate launch`: every option not listed above goes to accelerate (e.g. "
            "--num_processes 8, --config_file my.yaml, --main_process_port 29501). --accelerate_config NAME picks a "
            "packaged accelerate config (cpu, single_gpu, multi_gpu, deepspeed_zero2, deepspeed_zero3, fsdp)."
        )
    else:
        epilog += (
            "\n\nRuns in this process; with accelerate options (e.g. --accelerate_config multi_gpu, --num_processes"
            " 4) it is launched through `accelerate launch` instead, data-parallel."
        )
    epilog = "\n\n".join(textwrap.fill(paragraph, 110) for paragraph in epilog.split("\n\n"))
    return {"description": module.__doc__, "epilog": epilog, "formatter_class": HelpFormatter}


def run_recipe(recipe: str, argv: list[str]) -> int:
    """Parse `argv` as the recipe does, then launch it through accelerate (evaluation: in this process unless
    accelerate options are given)."""
    prog = f"{PROG} {recipes.command_name(recipe)}"
    parsed, script_args, launch_args = recipes.parse(recipe, argv, prog=prog, **recipe_help(recipe))
    if recipe in recipes.TRAINING_RECIPES or launch_args:
        return recipes.launch(recipe, script_args, launch_args)
    module = importlib.import_module(f"vlsafe.recipes.{recipe}")
    module.main(*parsed)
    return 0


# -- run: the pipeline -------------------------------------------------------------------------------------------
def run_pipeline(argv: list[str]) -> int:
    """`vlsafe run --config pipeline.yaml`: train, evaluate, card, publish, Space (vlsafe.pipeline)."""
    from vlsafe import pipeline

    parser = argparse.ArgumentParser(
        prog=f"{PROG} run", description=pipeline.__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--config",
        required=True,
        help="Pipeline YAML: a path or a packaged name (" + ", ".join(pipeline.packaged_names()) + ").",
    )
    parser.add_argument(
        "--repo_id", help="Publish the adapter to this model repo (overrides publish.repo_id)."
    )
    parser.add_argument(
        "--base_model_repo", help="Hub id of the base model, when it was trained from a folder."
    )
    parser.add_argument("--space_id", help="Push the compare Space here (overrides space.space_id).")
    parser.add_argument("--private", action="store_true", help="Create the adapter repo and Space private.")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override any pipeline value by its dotted key, e.g. sft.args.max_steps=20 (YAML value).",
    )
    args = parser.parse_args(argv)
    config = pipeline.load_pipeline(
        args.config,
        overrides=args.set,
        repo_id=args.repo_id,
        base_model_repo=args.base_model_repo,
        space_id=args.space_id,
        private=args.private or None,
    )
    pipeline.run_pipeline(config)
    return 0


# -- publish, space, fixtures ------------------------------------------------------------------------------------
def publish(argv: list[str]) -> int:
    """`vlsafe publish`: one commit of a training output folder to a Hub model repo (vlsafe.publish)."""
    from vlsafe import publish as publishing

    parser = publishing.make_parser(
        prog=f"{PROG} publish", description=publishing.__doc__, formatter_class=HelpFormatter
    )
    (args,) = parser.parse_args_and_config(argv)
    publishing.main(args)
    return 0


def push_space(argv: list[str]) -> int:
    """`vlsafe space --push ...`: spaces/push_space.py's main with these arguments."""
    from trl import TrlParser

    module = recipes.push_space_module()
    parser = TrlParser(
        (module.PushArguments,),
        prog=f"{PROG} space --push",
        description=module.__doc__,
        formatter_class=HelpFormatter,
    )
    (args,) = parser.parse_args_and_config(argv)
    module.main(args)
    return 0


def space(argv: list[str]) -> int:
    """`vlsafe space`: serve spaces/compare locally (settings as VLSAFE_* variables), or `--push` it to the Hub."""
    if "--push" in argv:
        return push_space([arg for arg in argv if arg != "--push"])
    from vlsafe.compare import ENV_PREFIX, CompareConfig

    parser = argparse.ArgumentParser(
        prog=f"{PROG} space",
        description="Serve the compare Space (base vs safety-tuned, side by side) on http://127.0.0.1:7860; "
        "default: the model and adapter of `make demo`. `vlsafe space --push --help`: publish it as a Space.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--push", action="store_true", help="Push the Space to the Hub (spaces/push_space.py)."
    )
    for name in CompareConfig.field_names():
        parser.add_argument(f"--{name}", help=f"Sets {ENV_PREFIX}{name.upper()}.")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for name in CompareConfig.field_names():
        if getattr(args, name) is not None:
            env[f"{ENV_PREFIX}{name.upper()}"] = getattr(args, name)
    app = recipes.spaces_dir() / "compare" / "app.py"
    return subprocess.run([sys.executable, str(app)], env=env, check=False).returncode


def fixtures(argv: list[str]) -> int:
    """`vlsafe fixtures`: build the embedded default (tiny VLMs, synthetic data; vlsafe.fixtures)."""
    from vlsafe.fixtures.__main__ import main as build

    build(argv, prog=f"{PROG} fixtures")
    return 0


# -- env ---------------------------------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def extras() -> dict[str, str]:
    """Each optional extra of vlsafe: installed (with versions), or missing with the command that installs it."""
    from packaging.requirements import Requirement

    try:
        requirements = [Requirement(text) for text in metadata.requires("vlsafe") or []]
    except metadata.PackageNotFoundError:
        return {}
    found: dict[str, list[Requirement]] = {}
    for requirement in requirements:
        marker = str(requirement.marker or "")
        if "extra ==" in marker:
            found.setdefault(marker.split("extra ==")[1].strip(" \"'"), []).append(requirement)
    status = {}
    for extra, needed in sorted(found.items()):
        versions = [(req, _version(req.name)) for req in needed]
        if all(v is not None and req.specifier.contains(v, prereleases=True) for req, v in versions):
            status[extra] = "installed (" + ", ".join(f"{req.name} {v}" for req, v in versions) + ")"
        else:
            status[extra] = f"not installed: pip install 'vlsafe[{extra}]'"
    return status


def devices() -> str:
    """The accelerators torch sees, else cpu."""
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if torch.backends.mps.is_available():
        return "MPS"
    return f"cpu ({os.cpu_count()} cores)"


def environment() -> dict[str, object]:
    """What a bug report needs: versions, devices, extras, the accelerate config and the Hub endpoint (whether a
    token is configured, never the token)."""
    from accelerate.commands.config import default_config_file
    from huggingface_hub import constants, get_token

    return {
        "vlsafe": _version("vlsafe") or "not installed (running from source)",
        "Python": platform.python_version(),
        "Platform": platform.platform(),
        **{package: _version(package) or "not installed" for package in PACKAGES},
        "accelerator(s)": devices(),
        "accelerate default config": default_config_file if Path(default_config_file).is_file() else "none",
        "Hub endpoint": constants.ENDPOINT,
        "Hub token": "configured" if get_token() else "none (hf auth login, or HF_TOKEN)",
        "recipes": str(recipes.ROOT),
        "extras": extras(),
    }


def env(argv: list[str]) -> int:
    """`vlsafe env`: print the environment for a bug report."""
    argparse.ArgumentParser(prog=f"{PROG} env", description=environment.__doc__).parse_args(argv)
    lines = []
    for key, value in environment().items():
        if isinstance(value, dict):
            lines.append(f"- {key}:" + "".join(f"\n  - {k}: {v}" for k, v in value.items()) if value else "")
        else:
            lines.append(f"- {key}: {value}")
    print("Copy-paste this into a bug report:\n\n" + "\n".join(line for line in lines if line))
    return 0


# -- dispatch ----------------------------------------------------------------------------------------------------
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "sft-vlguard": ("VLGuard LoRA SFT (recipes/sft_vlguard.py, through accelerate)",
                    lambda argv: run_recipe("sft_vlguard", argv)),
    "sft-mis": ("MIS multi-image SFT (recipes/sft_mis.py, through accelerate)",
                lambda argv: run_recipe("sft_mis", argv)),
    "dpo": ("DPO safety tuning (recipes/dpo_safety.py, through accelerate)",
            lambda argv: run_recipe("dpo_safety", argv)),
    "eval": ("Safety evaluation, base vs tuned (recipes/evaluate_safety.py)",
             lambda argv: run_recipe("evaluate_safety", argv)),
    "run": ("The pipeline: train, evaluate, card, publish, Space (skips what is done)", run_pipeline),
    "publish": ("Publish a training output folder to the Hub in one commit", publish),
    "space": ("Serve the compare Space locally, or --push it to the Hub", space),
    "fixtures": ("Build the embedded default: tiny VLMs and synthetic data", fixtures),
    "env": ("Print versions, devices and installed extras", env),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the `vlsafe` command; its exit status (errors a user can fix print one line, no traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)  # each command parses (and helps) itself
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help, or an unknown command: argparse prints and exits
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[argv[0]][1](argv[1:])
    except VlsafeError as error:
        print(f"{PROG} {argv[0]}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
