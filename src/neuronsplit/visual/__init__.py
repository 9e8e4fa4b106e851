"""Images that show what a unit or subunit responds to.

* :mod:`~neuronsplit.visual.references` -- reference images: the samples that activate a unit
  or subunit most (or give it the most relevance), cropped to the receptive field of the
  maximising position (convs) or to the maximising patch (ViT tokens);
* :mod:`~neuronsplit.visual.featurevis` -- feature visualisation: activation maximisation in a
  decorrelated Fourier image parameterisation with jitter, scale and rotation.

Names are imported lazily, so ``import neuronsplit.visual`` loads neither module.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "reference_images": "references",
    "ReferenceImage": "references",
    "ReferenceSet": "references",
    "visualise": "featurevis",
    "FeatureVisualisation": "featurevis",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuronsplit.visual' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
