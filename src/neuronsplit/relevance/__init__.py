"""Relevance backends: gradient x activation (default) and Zennit LRP composites.

:func:`get_backend` turns a ``relevance=`` argument (``"grad_x_act"``, a Zennit composite, a
:class:`Zennit` or any :class:`RelevanceBackend`) into the one backend object that ``scan``,
``Disentangle`` and ``ZennitAttribution`` use. :meth:`Zennit.for_model` picks the canonizers
(and a default composite) from the model's family (:mod:`~neuronsplit.relevance.families`).
"""

from .backend import GradXAct, RelevanceBackend, get_backend, per_unit
from .canonizers import (
    ExactNamedMergeBatchNorm,
    ExactSequentialMergeBatchNorm,
    TimmResNetCanonizer,
    TorchvisionResNetCanonizer,
)
from .families import ModelFamily, detect_family, model_families, register_family
from .fast_rules import FastEpsilon
from .split_canonizer import SplitLayerCanonizer, SplitRule, register_split_rules
from .vit import TimmViTCanonizer, TimmViTComposite
from .vit_rules import AttentionValues, FastLayerNormRule, LayerNormRule, TokenMean
from .zennit import Zennit

__all__ = [
    "RelevanceBackend",
    "GradXAct",
    "Zennit",
    "get_backend",
    "per_unit",
    "TimmResNetCanonizer",
    "TorchvisionResNetCanonizer",
    "ExactSequentialMergeBatchNorm",
    "ExactNamedMergeBatchNorm",
    "ModelFamily",
    "model_families",
    "detect_family",
    "register_family",
    "SplitLayerCanonizer",
    "SplitRule",
    "register_split_rules",
    "TimmViTCanonizer",
    "TimmViTComposite",
    "LayerNormRule",
    "FastEpsilon",
    "FastLayerNormRule",
    "AttentionValues",
    "TokenMean",
]
