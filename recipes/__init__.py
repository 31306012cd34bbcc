"""vlsafe's recipes: launch scripts, their configs (configs/<model>/<recipe>.yaml), accelerate configs
(accelerate/*.yaml) and pipelines (pipelines/*.yaml), and how to launch them.

This folder is both what users launch (`accelerate launch recipes/sft_vlguard.py --config ...`) and, once vlsafe is
installed, the package `vlsafe.recipes` (pyproject.toml maps it), whose files the `vlsafe` command and pipeline
launch (`vlsafe sft-vlguard --config <model>`): one implementation, shipped in the wheel with its configs, so a
config name works without a clone. Nothing heavy is imported here: importing a recipe module is what loads TRL.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from vlsafe.errors import VlsafeError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
RECIPES = ("sft_vlguard", "sft_mis", "dpo_safety", "evaluate_safety")
TRAINING_RECIPES = ("sft_vlguard", "sft_mis", "dpo_safety")
ACCELERATE_CONFIG_FLAG = "--accelerate_config"


def script(recipe: str) -> Path:
    """The launch script of `recipe` (what `accelerate launch` runs)."""
    if recipe not in RECIPES:
        raise VlsafeError(f"Unknown recipe {recipe!r}; the recipes are {', '.join(RECIPES)}.")
    return ROOT / f"{recipe}.py"


def _packaged(folder: Path, pattern: str) -> list[str]:
    return sorted(str(path.relative_to(folder).with_suffix("")) for path in folder.glob(pattern))


def config_names(recipe: str) -> list[str]:
    """The packaged config names of `recipe`: the model folders that hold configs/<model>/<recipe>.yaml."""
    return sorted(path.parent.name for path in (ROOT / "configs").glob(f"*/{recipe}.yaml"))


def resolve(value: str, folder: Path, candidates: list[Path], what: str, names: list[str]) -> Path:
    """`value` as a file path when one exists, else the first packaged candidate that does; else an error that
    lists the packaged names."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise VlsafeError(
        f"{what} {value!r} is neither a file nor a packaged name. Pass a YAML path, or one of: {', '.join(names)} "
        f"(in {folder})."
    )


def config(recipe: str, value: str) -> Path:
    """The config file `value` names for `recipe`: a path, a model name (configs/<model>/<recipe>.yaml) or
    <model>/<file> (configs/<model>/<file>.yaml, e.g. tiny/evaluate_suite)."""
    folder, name = ROOT / "configs", value.removesuffix(".yaml")
    names = config_names(recipe) + (
        [] if recipe in TRAINING_RECIPES else _packaged(folder, "*/evaluate_*.yaml")
    )
    candidates = [folder / name / f"{recipe}.yaml", folder / f"{name}.yaml"] if name else []
    return resolve(value, folder, candidates, f"The {recipe} config", sorted(set(names)))


def accelerate_config(value: str) -> Path:
    """The accelerate config file `value` names: a path, or a packaged name (cpu, single_gpu, multi_gpu, ...)."""
    folder = ROOT / "accelerate"
    return resolve(value, folder, [folder / f"{value.removesuffix('.yaml')}.yaml"], "The accelerate config",
                   _packaged(folder, "*.yaml"))  # fmt: skip


def pipeline_config(value: str) -> Path:
    """The pipeline file `value` names: a path, or a packaged name (pipelines/<name>.yaml)."""
    folder = ROOT / "pipelines"
    return resolve(value, folder, [folder / f"{value.removesuffix('.yaml')}.yaml"], "The pipeline",
                   _packaged(folder, "*.yaml"))  # fmt: skip


def with_config(recipe: str, argv: list[str]) -> list[str]:
    """`argv` with the value of ``--config`` resolved to a file (TrlParser opens it as a path)."""
    if "--config" not in argv:
        return list(argv)
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise VlsafeError("--config needs a value: a YAML path or a packaged config name (e.g. tiny).")
    return [*argv[: index + 1], str(config(recipe, argv[index + 1])), *argv[index + 2 :]]


def with_accelerate_config(launch_args: list[str]) -> list[str]:
    """``--accelerate_config <name or path>`` turned into accelerate's ``--config_file <path>`` (as `trl` does)."""
    if ACCELERATE_CONFIG_FLAG not in launch_args:
        return list(launch_args)
    index = launch_args.index(ACCELERATE_CONFIG_FLAG)
    if index + 1 >= len(launch_args):
        raise VlsafeError(
            f"{ACCELERATE_CONFIG_FLAG} needs a value: a YAML path or a name such as cpu or multi_gpu."
        )
    path = accelerate_config(launch_args[index + 1])
    return ["--config_file", str(path), *launch_args[:index], *launch_args[index + 2 :]]


def _without(argv: list[str], subsequence: list[str]) -> list[str]:
    """`argv` without the ordered subsequence `subsequence` (the options that go to accelerate)."""
    rest, items = [], iter(subsequence)
    current = next(items, None)
    for item in argv:
        if current is not None and item == current:
            current = next(items, None)
        else:
            rest.append(item)
    return rest


def parse(
    recipe: str, argv: list[str], *, prog: str | None = None, **parser_kwargs: Any
) -> tuple[Any, list, list]:
    """Parse `argv` with the recipe's own parser: (its dataclasses, the recipe's argv with ``--config`` resolved,
    the options it does not know, which are accelerate's). ``--help`` prints the recipe's help and exits."""
    argv = with_config(recipe, argv)
    module = importlib.import_module(f"vlsafe.recipes.{recipe}")
    parser = module.make_parser(prog=prog, **parser_kwargs)
    *parsed, config_rest, cli_rest = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if config_rest:
        keys = [item.removeprefix("--") for item in config_rest[::2]]
        raise VlsafeError(
            f"The config sets {', '.join(keys)}, which {recipe} does not know. Fix or remove them; accelerate options "
            "go on the command line (e.g. --num_processes 8) or in an accelerate config (--accelerate_config)."
        )
    return parsed, _without(argv, cli_rest), cli_rest


def accelerate_arguments(recipe: str, launch_args: list[str]) -> Any:
    """accelerate's parsed ``launch`` arguments for `recipe` with `launch_args`; an option neither the recipe nor
    accelerate knows is an error naming it."""
    from accelerate.commands.launch import launch_command_parser

    launch_args = with_accelerate_config(launch_args)
    parser = launch_command_parser()
    _, unknown = parser.parse_known_args([*launch_args, str(script(recipe))])
    if unknown:
        raise VlsafeError(
            f"Unknown option(s) {' '.join(unknown)}: neither an option of {recipe} nor of `accelerate launch`. "
            f"See `vlsafe {command_name(recipe)} --help` and `accelerate launch --help`."
        )
    return parser, launch_args


def launch(recipe: str, script_args: list[str], launch_args: list[str]) -> int:
    """Run the recipe's script through `accelerate launch` (as `trl sft` does); its exit status."""
    from accelerate.commands.launch import launch_command
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    parser, launch_args = accelerate_arguments(recipe, launch_args)
    arguments = parser.parse_args([*launch_args, str(script(recipe)), *script_args])
    logger.info("accelerate launch %s %s %s", " ".join(launch_args), script(recipe), " ".join(script_args))
    try:
        launch_command(arguments)
    except subprocess.CalledProcessError as error:  # the script failed and printed why
        return error.returncode or 1
    except ChildFailedError:  # a process of a multi-process launch failed; torch printed which and why
        return 1
    return 0


def command_name(recipe: str) -> str:
    """The `vlsafe` subcommand of a recipe."""
    return {
        "sft_vlguard": "sft-vlguard",
        "sft_mis": "sft-mis",
        "dpo_safety": "dpo",
        "evaluate_safety": "eval",
    }[recipe]


def spaces_dir() -> Path:
    """The checkout's spaces/ folder (next to recipes/, or in the working directory); the Space app ships with
    the repository, not in the wheel."""
    for folder in (ROOT.parent / "spaces", Path.cwd() / "spaces"):
        if (folder / "push_space.py").is_file() and (folder / "compare" / "app.py").is_file():
            return folder
    raise VlsafeError(
        "The Space app (spaces/compare, spaces/push_space.py) is not in the installed package: it ships with the "
        "repository. Run `vlsafe space` from a clone of vlsafe, or in a folder that holds its spaces/."
    )


def push_space_module():
    """spaces/push_space.py as a module (the Space pusher of `vlsafe space --push` and the pipeline)."""
    name = "vlsafe_push_space"
    spec = importlib.util.spec_from_file_location(name, spaces_dir() / "push_space.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module
