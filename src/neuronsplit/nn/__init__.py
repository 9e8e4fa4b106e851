"""Split models: split layers, the merge, surgery, equivalence checks, files.

:func:`apply_plan` turns a :class:`~neuronsplit.plan.SplitPlan` into a rewritten copy of a
model in which each planned layer is a :class:`SplitConv2d` / :class:`SplitLinear`;
:func:`verify_equivalence` checks it against the original; :func:`save` / :func:`load` store it;
:func:`steer` scales its subunits (in a ``with`` block, or baked into a new model).
"""

from .io import load, save
from .merge import RESIDUAL, IndexMerge
from .report import DtypeResult, EquivalenceReport, LayerResult, UnitDiff
from .split_layer import SPLIT_TYPES, SplitConv2d, SplitLinear, explicit_rows
from .steering import Steering, load_scales, steer
from .surgery import apply_plan, check_plan, get_split_layer, iter_split_layers, plan_of
from .verify import DEFAULT_RTOL, verify_equivalence

__all__ = [
    "IndexMerge",
    "RESIDUAL",
    "SplitConv2d",
    "SplitLinear",
    "SPLIT_TYPES",
    "explicit_rows",
    "apply_plan",
    "check_plan",
    "get_split_layer",
    "iter_split_layers",
    "plan_of",
    "verify_equivalence",
    "EquivalenceReport",
    "DtypeResult",
    "LayerResult",
    "UnitDiff",
    "DEFAULT_RTOL",
    "save",
    "load",
    "steer",
    "Steering",
    "load_scales",
]
