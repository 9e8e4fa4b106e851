"""The embedded demo: scikit-learn's digits, a small CNN trained in seconds, and the pipeline
that scans, detects, splits, verifies and evaluates it (``neuronsplit demo``); and a small timm
ViT on the same digits (:mod:`neuronsplit.demo.vit`).

The pipeline (:mod:`neuronsplit.demo.pipeline`: the scan, zennit, captum) and the ViT (timm)
are imported on first use, so that ``neuronsplit demo`` can start training the ViT in the
background after importing only torch and timm, and import the rest while it trains.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .data import DIGIT_CLASSES, DigitsData, digits_loader, load_digits
from .model import (
    DEMO_LAYER,
    DigitsNet,
    TrainResult,
    default_cache_dir,
    get_demo_model,
    train_demo_model,
)

if TYPE_CHECKING:  # for type checkers and the API docs; imported on first use below
    from .pipeline import demo_plan, format_table, run_demo
    from .vit import VIT_CONFIG, DigitsViT, get_demo_vit, train_demo_vit

#: names imported on first use, and the submodule each comes from
_LAZY = {
    **dict.fromkeys(("demo_plan", "format_table", "run_demo"), "pipeline"),
    **dict.fromkeys(("DigitsViT", "VIT_CONFIG", "train_demo_vit", "get_demo_vit"), "vit"),
}

__all__ = [
    "DIGIT_CLASSES",
    "DigitsData",
    "digits_loader",
    "load_digits",
    "DEMO_LAYER",
    "DigitsNet",
    "TrainResult",
    "default_cache_dir",
    "get_demo_model",
    "train_demo_model",
    "demo_plan",
    "format_table",
    "run_demo",
    "DigitsViT",
    "VIT_CONFIG",
    "train_demo_vit",
    "get_demo_vit",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
