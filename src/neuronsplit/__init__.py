"""neuronsplit: split polysemantic units into exact, Captum-ready subunits.

The flat namespace holds the verbs and the core types; internals live in the subpackages,
which follow the data flow: :mod:`~neuronsplit.capture` (hooks, contributions) ->
:mod:`~neuronsplit.relevance` -> :mod:`~neuronsplit.stats` (the scan) ->
:mod:`~neuronsplit.methods` (Hesse et al.'s detection and split) -> :mod:`~neuronsplit.plan`
(pure data) -> :mod:`~neuronsplit.nn` (split layers, surgery, verification, files) ->
:mod:`~neuronsplit.attribution` (Captum). Names are imported lazily, so ``import neuronsplit``
stays cheap and optional dependencies (Captum Insights, Flask) load only when used.

Examples
--------
>>> import neuronsplit as ns
>>> callable(ns.scan), ns.SplitPlan.__module__
(True, 'neuronsplit.plan.plan')
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # relevance backends
    "Zennit": "relevance",
    "GradXAct": "relevance",
    "TimmResNetCanonizer": "relevance",
    # scanning and detection (Hesse et al.)
    "scan": "stats",
    "ScanResult": "stats",
    "find_polysemantic": "methods.hesse",
    "PolysemanticUnit": "methods.hesse",
    "pairs_table": "methods.hesse",
    "plan_split": "methods.hesse",
    # unsupervised whole-layer splits (ELUDe)
    "discover": "methods.elude",
    "concept_fractions": "evaluation",
    "top_k_purity": "evaluation",
    "evaluate": "evaluation",
    "Evaluation": "evaluation",
    "report": "reporting",
    # plans
    "UnitSplit": "plan",
    "LayerSplit": "plan",
    "SplitPlan": "plan",
    # split models
    "apply_plan": "nn",
    "SplitConv2d": "nn",
    "SplitLinear": "nn",
    "verify_equivalence": "nn",
    "EquivalenceReport": "nn",
    "save": "nn",
    "load": "nn",
    "steer": "nn",
    # captum integration
    "Disentangle": "attribution",
    "UnitAttribution": "attribution",
    "SubunitRef": "attribution",
    "subunit_layer": "attribution",
    "subunit_selector": "attribution",
    "ZennitAttribution": "attribution",
    "LayerZennitAttribution": "attribution",
    # loading models and data
    "load_timm_model": "loading",
    "image_folder_loader": "loading",
    # errors
    "NeuronSplitError": "errors",
    "UnknownLayerError": "errors",
    "UnsupportedLayerError": "errors",
    "InvalidTargetError": "errors",
    "EmptyClassError": "errors",
    "NonFiniteError": "errors",
    "PlanError": "errors",
    "PlanMismatchError": "errors",
    "CorruptFileError": "errors",
    "IncompatibleResultsError": "errors",
    "NotExactError": "errors",
    "UnknownSubunitError": "errors",
    "InputShapeError": "errors",
    "MissingExtraError": "errors",
    "InvalidArgumentError": "errors",
    "ArgumentTypeError": "errors",
    "MissingFileError": "errors",
    "DistributedError": "errors",
    "MetaTensorError": "errors",
    "UnsupportedModelError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]
#: subpackages reachable as attributes without an import: the sparse-dictionary yardstick
#: (docs/sdl.md) and the matplotlib figures (docs/evaluation.md)
_NAMESPACES = ("sdl", "plots", "visual")


def __getattr__(name: str) -> Any:
    if name in _NAMESPACES:  # subpackages used as namespaces: ns.sdl.train_sae, ns.plots.density
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuronsplit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_NAMESPACES))
