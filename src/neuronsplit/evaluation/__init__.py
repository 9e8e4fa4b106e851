"""Evaluating a split: Hesse et al.'s per-concept fractions, top-k label purity, and planted
ground truth for unsupervised splits."""

from .fractions import ConceptFractions, concept_fractions
from .planted import PlantedConcepts, UnitRecovery, planted_concepts, recovery
from .purity import PurityReport, label_purity, top_k_purity

__all__ = [
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
