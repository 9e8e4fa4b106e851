"""Evaluating a split: :func:`evaluate` (every measure, one tidy row per unit, subunit and
residual), Hesse et al.'s per-concept fractions, top-k label purity, and planted ground truth for
unsupervised splits."""

from .evaluate import evaluate
from .fractions import ConceptFractions, concept_fractions
from .planted import PlantedConcepts, UnitRecovery, planted_concepts, recovery
from .purity import PurityReport, label_purity, top_k_purity
from .result import Evaluation, EvaluationRow
from .stream import subunit_values

__all__ = [
    "evaluate",
    "Evaluation",
    "EvaluationRow",
    "subunit_values",
    "ConceptFractions",
    "concept_fractions",
    "PurityReport",
    "label_purity",
    "top_k_purity",
    "PlantedConcepts",
    "UnitRecovery",
    "planted_concepts",
    "recovery",
]
