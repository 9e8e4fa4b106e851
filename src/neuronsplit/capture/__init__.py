"""Reading layers: names, supported types, the one hook context, per-input contributions.

Everything that hooks a layer goes through :func:`capture`; everything that needs ``w_uj * x_j``
goes through :func:`contributions` (or :func:`tap_sums` and :func:`contributions_from_taps` for
the summed form that the scan accumulates).
"""

from .contributions import (
    contributions,
    contributions_from_taps,
    flat_weight,
    tap_sums,
    unit_sum,
)
from .hooks import Capture, capture, differentiable
from .layers import (
    SUPPORTED_TYPES,
    check_plain,
    check_plain_forward,
    check_supported,
    eval_mode,
    is_split_layer,
    layer_kind,
    layer_shape,
    model_device,
    resolve_layer,
    unit_axis,
)

__all__ = [
    "Capture",
    "capture",
    "differentiable",
    "contributions",
    "contributions_from_taps",
    "flat_weight",
    "tap_sums",
    "unit_sum",
    "SUPPORTED_TYPES",
    "check_plain",
    "check_plain_forward",
    "check_supported",
    "eval_mode",
    "is_split_layer",
    "model_device",
    "layer_kind",
    "layer_shape",
    "resolve_layer",
    "unit_axis",
]
