"""The library's layers point down only (an AST check of every module under toolkit/vlsafe), and its public API
(`import vlsafe`) is complete and light."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "toolkit" / "vlsafe"
# Component (first name under vlsafe) -> layer. A module may import its own component and lower layers only:
# never a higher layer, nor another component of its own layer (that is how cycles start).
LAYERS = {
    "errors": 0,  # the bottom: user-facing errors, and the one Hub-error mapper
    "data": 1,  # loaders, formats, preference pairs
    "modeling": 2,  # model + processor loading, families
    "speed": 2,  # memory estimates -> speed settings
    "cards": 2,  # model cards
    "hub": 3,  # publish, and the one adapter loader
    "evaluation": 4,  # benchmarks -> engines -> judges -> metrics -> report
    "compare": 5,  # the Space's engine
    "safety_curve": 5,  # safety metrics during training, from the evaluation stages
    "training": 6,  # TRL trainers for the recipes
    "recipes": 7,  # vlsafe.recipes: the launch scripts (pyproject maps recipes/ there)
    "publish": 7,  # python -m vlsafe.publish
    "fixtures": 7,  # tiny offline models and data: the embedded default, and the tests'
    "pipeline": 8,  # train -> evaluate -> publish, running the recipes
    "cli": 9,  # the `vlsafe` command, over all of the above
    "__init__": 10,  # `vlsafe` itself: the public API, imported by users, never by the library
}
OUTSIDE = ("recipes", "spaces", "tests", "benchmarks")  # the top: nothing in the library may import them


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _component(module: str, root: Path) -> str:
    """The component of a module under the package folder `root` (or of a subpackage mapped elsewhere, named in
    LAYERS); a name that is neither (``vlsafe.load_vlguard``) is an attribute of the package itself, the facade."""
    parts = module.split(".")
    if len(parts) > 1 and (
        parts[1] in LAYERS or (root / f"{parts[1]}.py").is_file() or (root / parts[1]).is_dir()
    ):
        return parts[1]
    return "__init__"


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in `path`, at any depth (functions, TYPE_CHECKING blocks too), relative
    imports resolved, and `importlib.import_module("<literal>")` calls counted as imports. ``from pkg import a``
    counts as an import of ``pkg.a`` when `pkg` is the package itself (`a` may be a subpackage), else of `pkg`."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base == root.name:
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def layer_violations(root: Path, layers: dict[str, int] = LAYERS) -> list[str]:
    """'file:line: problem' for every import under the package folder `root` that points up or sideways, and for
    every module of a component `layers` does not place."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        here = _component(_module_name(path, root), root)
        where = path.relative_to(root.parent)
        if here not in layers:
            problems.append(
                f"{where}: component {here!r} has no layer; add it to LAYERS in tests/test_layers.py"
            )
            continue
        for line, module in imported_modules(path, root):
            top = module.split(".")[0]
            if top in OUTSIDE:
                problems.append(f"{where}:{line}: imports {module} (the library never imports {top}/)")
            if top != root.name:
                continue
            there = _component(module, root)
            if there == here:
                continue
            if there not in layers:
                problems.append(f"{where}:{line}: imports {module}, whose component has no layer")
            elif layers[there] >= layers[here]:
                direction = "up" if layers[there] > layers[here] else "sideways"
                problems.append(
                    f"{where}:{line}: imports {module} ({direction}: {here} is layer {layers[here]}, "
                    f"{there} is layer {layers[there]})"
                )
    return problems


def test_the_library_imports_only_down() -> None:
    assert layer_violations(PACKAGE) == []


def test_the_check_finds_upward_sideways_and_hidden_imports(tmp_path: Path) -> None:
    """A synthetic package with one import of each kind the check must catch, and the allowed ones."""
    files = {
        "__init__.py": "import importlib\ndef __getattr__(name):\n    return importlib.import_module(name)\n",
        "errors.py": "",
        "data/__init__.py": "",
        "data/sources.py": "from vlsafe.errors import VlsafeError\nfrom vlsafe.data import formats\n",
        "data/formats.py": "from . import sources\nfrom .sources import VlsafeError\n",
        "data/preference_hub.py": "from vlsafe.hub import hub_error\n",  # up, at the top of a module
        "data/preferences.py": "def judge():\n    from ..evaluation.judges import keyword_label\n",  # up, relative, late
        "data/lazy.py": "import importlib\nimportlib.import_module('vlsafe.training')\n",  # up, by name
        "data/recipe.py": "import recipes.dpo_safety\n",  # the library importing a script above it
        "hub.py": "from vlsafe.data.sources import x\nfrom vlsafe.cards import y\nimport vlsafe.errors\n",
        "cards.py": "import vlsafe.modeling\n",  # sideways: both layer 2
        "modeling.py": "from vlsafe.errors import VlsafeError\n",
        "evaluation/__init__.py": "",
        "evaluation/judges.py": "from vlsafe.hub import load\nfrom vlsafe.evaluation import engine\n",
        "training.py": "from vlsafe import load_vlguard\n",  # the facade: only users import it
        "newthing.py": "",
    }
    root = tmp_path / "vlsafe"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    problems = layer_violations(root)
    assert problems == [
        "vlsafe/cards.py:1: imports vlsafe.modeling (sideways: cards is layer 2, modeling is layer 2)",
        "vlsafe/data/lazy.py:2: imports vlsafe.training (up: data is layer 1, training is layer 6)",
        "vlsafe/data/preference_hub.py:1: imports vlsafe.hub (up: data is layer 1, hub is layer 3)",
        "vlsafe/data/preferences.py:2: imports vlsafe.evaluation.judges (up: data is layer 1, evaluation is layer 4)",
        "vlsafe/data/recipe.py:1: imports recipes.dpo_safety (the library never imports recipes/)",
        "vlsafe/newthing.py: component 'newthing' has no layer; add it to LAYERS in tests/test_layers.py",
        "vlsafe/training.py:1: imports vlsafe.load_vlguard (up: training is layer 6, __init__ is layer 10)",
    ]


# -- the public API --------------------------------------------------------------------------------------------
PUBLIC = {  # what the README's API section lists, and where each name is defined
    "load_vlguard": "vlsafe.data.vlguard",
    "load_mis_train": "vlsafe.data.mis",
    "load_mis_test": "vlsafe.data.mis",
    "load_sharegpt": "vlsafe.data.sharegpt",
    "mix_with_helpfulness": "vlsafe.data.mixture",
    "load_benchmark": "vlsafe.evaluation.benchmarks",
    "EvaluationConfig": "vlsafe.evaluation.config",
    "run_evaluation": "vlsafe.evaluation.run",
    "load_adapter": "vlsafe.hub",
    "attach_adapter": "vlsafe.hub",
    "push_to_hub": "vlsafe.hub",
    "VlsafeError": "vlsafe.errors",
    "DataError": "vlsafe.errors",
    "HubAccessError": "vlsafe.errors",
}


def test_import_vlsafe_is_light_and_has_a_version() -> None:
    """A fresh interpreter: `import vlsafe` loads neither torch nor the HF libraries; the first use of a name
    imports its module only."""
    code = textwrap.dedent(
        """
        import sys
        import vlsafe
        heavy = ("torch", "transformers", "datasets", "peft", "trl", "huggingface_hub")
        print([m for m in heavy if m in sys.modules])
        vlsafe.DataError
        print([m for m in heavy if m in sys.modules], "vlsafe.data.vlguard" in sys.modules)
        print(vlsafe.__version__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    before, after, version = result.stdout.splitlines()
    assert before == "[]"
    assert after == "['huggingface_hub'] False"  # vlsafe.errors maps Hub errors; no data loader was loaded
    assert version == importlib.metadata.version("vlsafe")


def test_the_public_names_are_the_library_objects() -> None:
    import vlsafe

    assert set(vlsafe.__all__) == {"__version__", *PUBLIC}
    for name, module in PUBLIC.items():
        assert getattr(vlsafe, name) is getattr(importlib.import_module(module), name), name
        assert name in dir(vlsafe)
    with pytest.raises(AttributeError, match="has no attribute 'load_everything'"):
        vlsafe.load_everything  # noqa: B018 - the attribute access is the test
