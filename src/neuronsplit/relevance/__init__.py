"""Relevance backends: gradient x activation (default) and Zennit LRP composites.

:func:`get_backend` turns a ``relevance=`` argument (``"grad_x_act"``, a Zennit composite, a
:class:`Zennit` or any :class:`RelevanceBackend`) into the one backend object that both
``scan`` and ``Disentangle`` use.
"""

from .backend import GradXAct, RelevanceBackend, get_backend, per_unit
from .canonizers import TimmResNetCanonizer
from .zennit import Zennit

__all__ = [
    "RelevanceBackend",
    "GradXAct",
    "Zennit",
    "get_backend",
    "per_unit",
    "TimmResNetCanonizer",
]
