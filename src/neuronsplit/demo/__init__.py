"""The embedded demo: scikit-learn's digits, a small CNN trained in seconds, and the pipeline
that scans, detects, splits, verifies and evaluates it (``neuronsplit demo``).
"""

from .data import DIGIT_CLASSES, DigitsData, digits_loader, load_digits
from .model import (
    DEMO_LAYER,
    DigitsNet,
    TrainResult,
    default_cache_dir,
    get_demo_model,
    train_demo_model,
)
from .pipeline import demo_plan, format_table, run_demo

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
]
