"""vlsafe: safety fine-tuning for vision-language models (VLGuard, MIS, DPO) on TRL + PEFT, Hub-first.

The names users import live here::

    import vlsafe

    train = vlsafe.load_vlguard("ys-zong/VLGuard", "train")
    model, processor = vlsafe.load_adapter("<user>/<adapter-repo>")

They are loaded on first use (PEP 562 ``__getattr__``), so ``import vlsafe`` stays light: torch, transformers and
datasets are imported only by the module that needs them.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("vlsafe")
except PackageNotFoundError:  # a copy of the package without its metadata, e.g. the one a Space ships
    __version__ = "0+unknown"

# public name -> the module that defines it
_API = {
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
__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first use
    from vlsafe.data.mis import load_mis_test, load_mis_train
    from vlsafe.data.mixture import mix_with_helpfulness
    from vlsafe.data.sharegpt import load_sharegpt
    from vlsafe.data.vlguard import load_vlguard
    from vlsafe.errors import DataError, HubAccessError, VlsafeError
    from vlsafe.evaluation.benchmarks import load_benchmark
    from vlsafe.evaluation.config import EvaluationConfig
    from vlsafe.evaluation.run import run_evaluation
    from vlsafe.hub import attach_adapter, load_adapter, push_to_hub


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used, and keep the name here."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'vlsafe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
