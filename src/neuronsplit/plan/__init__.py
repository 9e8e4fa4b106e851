"""Split plans as pure data: :class:`UnitSplit` (one unit), :class:`LayerSplit` (one layer as
an integer assignment), :class:`SplitPlan` (the whole plan) and their files.

Nothing here imports ``torch.nn``: checking a plan against a model is done in
:mod:`neuronsplit.nn`.
"""

from .files import load_plan, save_plan
from .forms import MERGE_FORMS
from .layer import SHARED, LayerSplit
from .plan import PLAN_FORMAT, PLAN_VERSION, SplitPlan
from .unit import UnitSplit

__all__ = [
    "UnitSplit",
    "LayerSplit",
    "SplitPlan",
    "SHARED",
    "MERGE_FORMS",
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "save_plan",
    "load_plan",
]
