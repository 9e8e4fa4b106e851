"""Evaluating a split: Hesse et al.'s per-concept fractions."""

from .fractions import ConceptFractions, concept_fractions

__all__ = ["ConceptFractions", "concept_fractions"]
