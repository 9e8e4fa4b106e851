"""Typed exceptions raised by neuronsplit.

Every error names the offending value and says how to fix it. Each class also derives from the
closest built-in exception so that ``except ValueError`` style handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "NeuronSplitError",
    "UnknownLayerError",
    "UnsupportedLayerError",
    "InvalidTargetError",
    "EmptyClassError",
    "NonFiniteError",
    "PlanError",
    "PlanMismatchError",
    "CorruptFileError",
    "IncompatibleResultsError",
    "NotExactError",
    "UnknownSubunitError",
    "InputShapeError",
    "MissingExtraError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "MissingFileError",
    "DistributedError",
    "MetaTensorError",
    "UnsupportedModelError",
]


class NeuronSplitError(Exception):
    """Base class of every error raised on purpose by neuronsplit."""


class UnknownLayerError(NeuronSplitError, LookupError):
    """A dotted layer name that the model does not contain."""


class UnsupportedLayerError(NeuronSplitError, TypeError):
    """A layer of a type (or configuration, e.g. grouped conv) that neuronsplit cannot handle."""


class InvalidTargetError(NeuronSplitError, ValueError):
    """A label or target index outside ``[0, num_classes)`` or of the wrong shape."""


class EmptyClassError(NeuronSplitError, ValueError):
    """A class with no samples where statistics of that class are needed."""


class NonFiniteError(NeuronSplitError, FloatingPointError):
    """NaN or inf in activations, relevances or inputs."""


class PlanError(NeuronSplitError, ValueError):
    """A split plan that is internally inconsistent (duplicate or missing input indices, ...)."""


class PlanMismatchError(PlanError):
    """A split plan, saved file or scan result that does not fit the given model."""


class CorruptFileError(NeuronSplitError, ValueError):
    """A file that is not what neuronsplit wrote, or was damaged."""


class IncompatibleResultsError(NeuronSplitError, ValueError):
    """Two scan results that cannot be merged (different layers, classes or settings)."""


class NotExactError(NeuronSplitError, ValueError):
    """A rewrite whose outputs differ from the original beyond the tolerance."""


class UnknownSubunitError(NeuronSplitError, LookupError):
    """A (layer, unit, subunit) reference that the split model does not contain."""


class InputShapeError(NeuronSplitError, ValueError):
    """Inputs whose shape or type does not fit the model."""


class MissingExtraError(NeuronSplitError, ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""


class InvalidArgumentError(NeuronSplitError, ValueError):
    """An argument outside its valid range or set of choices; the message names the fix."""


class ArgumentTypeError(NeuronSplitError, TypeError):
    """An argument of the wrong type (a string where a model is needed, ...)."""


class MissingFileError(NeuronSplitError, FileNotFoundError):
    """A file or folder that does not exist where one was named."""


class DistributedError(NeuronSplitError, RuntimeError):
    """A problem of a distributed run: no process group, or another process failed."""


class MetaTensorError(NeuronSplitError, ValueError):
    """A model or input on the ``meta`` device where values are needed (meta tensors have
    shapes only: plan and apply on meta, then load the weights before running)."""


class UnsupportedModelError(NeuronSplitError, TypeError):
    """A model of no family that :meth:`neuronsplit.Zennit.for_model` knows; the message lists
    the supported families and shows how to pass a composite and canonizers by hand."""
