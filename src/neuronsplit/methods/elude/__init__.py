"""ELUDe (explicit, lossless, unsupervised disentanglement): :func:`discover`.

No labels: a unit's concepts are clusters of its input contributions on its top-activating
samples (:mod:`.concepts`), collected in one pass for whole layers (:mod:`.reservoir`).
"""

from .concepts import ConceptRule, UnitConcepts, find_concepts, span_coordinates
from .discovery import DEFAULT_TOP_N, discover
from .reservoir import TopInputs

__all__ = [
    "discover",
    "DEFAULT_TOP_N",
    "ConceptRule",
    "UnitConcepts",
    "find_concepts",
    "span_coordinates",
    "TopInputs",
]
