"""Hesse et al. (CVPRW 2025): supervised detection and split of polysemantic units.

Detection (:func:`find_polysemantic`) reads a :class:`~neuronsplit.ScanResult`; the split plan
(:func:`plan_split`) groups a unit's classes into concepts (:func:`concept_groups`), routes
every input with the rho rule (:func:`rho_assignment`) and picks rho by the official score.
"""

from .concepts import concept_groups, concept_labels, group_by_similarity
from .detect import (
    ClassPair,
    PolysemanticUnit,
    arv,
    cosine,
    find_polysemantic,
    pairs_table,
    relevant_classes,
)
from .diagnosis import DetectionDiagnosis, PolysemanticUnits
from .planner import plan_split
from .rho import RHO_GRID, hesse_masks, rho_assignment, rho_partition, subunit_score

__all__ = [
    "ClassPair",
    "PolysemanticUnit",
    "arv",
    "cosine",
    "find_polysemantic",
    "DetectionDiagnosis",
    "PolysemanticUnits",
    "pairs_table",
    "relevant_classes",
    "concept_groups",
    "concept_labels",
    "group_by_similarity",
    "plan_split",
    "RHO_GRID",
    "rho_assignment",
    "rho_partition",
    "hesse_masks",
    "subunit_score",
]
