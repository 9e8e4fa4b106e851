"""Captum integration: subunits as neurons, :class:`Disentangle` (the attribution of what flows
through one subunit) and Zennit LRP as Captum attributions (:class:`ZennitAttribution`,
:class:`LayerZennitAttribution`).
"""

from .disentangle import Disentangle, UnitAttribution
from .inputs import TargetLike, format_args, format_inputs, select_target
from .refs import (
    RESIDUAL,
    SubunitLike,
    SubunitRef,
    resolve_subunit,
    subunit_channel,
    subunit_layer,
    subunit_refs,
    subunit_rows,
)
from .selectors import ChannelSumSelector, TokenSumSelector, subunit_selector
from .zennit_attribution import LayerZennitAttribution, ZennitAttribution

__all__ = [
    "Disentangle",
    "UnitAttribution",
    "ZennitAttribution",
    "LayerZennitAttribution",
    "SubunitRef",
    "SubunitLike",
    "RESIDUAL",
    "subunit_layer",
    "subunit_selector",
    "subunit_channel",
    "subunit_refs",
    "subunit_rows",
    "resolve_subunit",
    "TokenSumSelector",
    "ChannelSumSelector",
    "TargetLike",
    "format_inputs",
    "format_args",
    "select_target",
]
