"""neuronsplit: split polysemantic units into exact, Captum-ready subunits.

The public names are imported lazily, so ``import neuronsplit`` stays cheap and optional
dependencies (Captum Insights, Flask) are only imported by the functions that need them.

Examples
--------
>>> import neuronsplit as ns
>>> callable(ns.scan)
True
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # relevance backends
    "Zennit": "relevance",
    "GradXAct": "relevance",
    "TimmResNetCanonizer": "relevance",
    # scanning and detection
    "scan": "scan",
    "ScanResult": "stats",
    "LayerStats": "stats",
    "find_polysemantic": "detect",
    "PolysemanticUnit": "detect",
    "arv": "detect",
    "pairs_table": "detect",
    "concept_fractions": "metrics",
    # plans and surgery
    "UnitSplit": "plan",
    "SplitPlan": "plan",
    "plan_split": "partition",
    "rho_partition": "partition",
    "apply_plan": "surgery",
    "IndexMerge": "surgery",
    "iter_split_layers": "surgery",
    "get_split_layer": "surgery",
    "plan_of": "surgery",
    "SplitConv2d": "surgery",
    "SplitLinear": "surgery",
    "verify_equivalence": "verify",
    "EquivalenceReport": "verify",
    "save": "io",
    "load": "io",
    # captum integration
    "Disentangle": "attribution",
    "UnitAttribution": "attribution",
    "SubunitRef": "attribution",
    "subunit_layer": "attribution",
    "subunit_selector": "attribution",
    # loading models and data
    "load_timm_model": "models",
    "image_folder_loader": "models",
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
}

__all__ = sorted(_EXPORTS) + ["__version__"]


# ``scan`` is both a submodule and a public function. Loading the submodule binds the package
# attribute ``scan`` to the module, which would shadow the lazy export, so the function is bound
# eagerly here, after its submodule has loaded (later imports of the submodule rebind nothing).
from .scan import scan  # noqa: E402, F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuronsplit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
