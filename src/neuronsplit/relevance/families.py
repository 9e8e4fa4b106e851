"""Model families for Zennit LRP: which canonizers and which default composite fit a model.

A :class:`ModelFamily` is a name, a detector ``detect(model) -> bool``, a canonizer factory
``canonizers(model) -> list`` and a default composite factory ``composite() -> Composite``.
:meth:`neuronsplit.Zennit.for_model` asks the registry (user families first, then
``torchvision-resnet``, ``timm-resnet``, ``timm-vit``, ``plain``) for the first family whose
detector accepts the model. The detectors see through split layers (a split ResNet is still a
ResNet; a split layer is one step of a plain chain), and the Zennit backend's session handles
them (:mod:`~neuronsplit.relevance.split_canonizer`: the BatchNorm after a split layer is
folded into its rows whenever the canonizers fold BatchNorms; ``plain`` names those pairs
from the graph too).

``plain`` is decided on the traced graph (``torch.fx``, split layers kept as leaves): every
module call is a convolution, linear layer, BatchNorm, activation, pooling, ``Flatten``,
``Dropout`` or ``Identity``, the only functions are reshapes and ``relu``, and every BatchNorm
reads the output of a convolution/linear layer used nowhere else, into which it is folded
(exactly, by name, so the order in which the modules were declared does not matter). A residual
add, attention, LayerNorm or a reduction makes a model not plain.

Examples
--------
>>> from torch import nn
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
>>> family = detect_family(model)
>>> family.name, [type(c).__name__ for c in family.canonizers(model)]
('plain', ['ExactNamedMergeBatchNorm'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._checks import check_module
from ..errors import ArgumentTypeError, InvalidArgumentError, UnsupportedModelError
from .canonizers import TimmResNetCanonizer, TorchvisionResNetCanonizer
from .plain_graph import plain_canonizers, plain_reason

__all__ = [
    "ModelFamily",
    "model_families",
    "register_family",
    "get_family",
    "detect_family",
    "family_rules",
    "plain_reason",
]


@dataclass(frozen=True)
class ModelFamily:
    """One model family: how to recognise it and which LRP canonizers/composite fit it.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"timm-resnet"``.
    summary : str
        One line for error messages and docs.
    detect : callable
        ``detect(model) -> bool``.
    canonizers : callable
        ``canonizers(model) -> list`` of fresh zennit canonizers for this model.
    composite : callable
        ``composite() -> zennit.core.Composite``, the default composite.
    refuses : callable, optional
        ``refuses(composite) -> str | None``: why a composite cannot explain this family with
        its canonizers (None: it can). A ViT's canonizer leaves LayerNorm, ``attn @ v`` and
        the residual sums to rules only :class:`~neuronsplit.relevance.TimmViTComposite` has;
        any other composite would pass plain gradients through them.
    """

    name: str
    summary: str
    detect: Callable[[nn.Module], bool]
    canonizers: Callable[[nn.Module], list[Any]]
    composite: Callable[[], Any]
    refuses: Callable[[Any], str | None] | None = None


# ------------------------------------------------------------------------------ the detectors
def _is_torchvision_resnet(model: nn.Module) -> bool:
    try:
        from torchvision.models import ResNet
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(model, ResNet)


def _is_timm_resnet(model: nn.Module) -> bool:
    try:
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    if not isinstance(model, ResNet):
        return False
    # attention (SE, ECA, ...) and blur-pool blocks multiply or filter outside any LRP rule
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    return all(b.se is None and (b.aa is None or isinstance(b.aa, nn.Identity)) for b in blocks)


def _is_timm_vit(model: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, VisionTransformer)


def _vit_module() -> Any:
    try:
        from . import vit
    except ImportError as err:  # pragma: no cover - a broken install
        raise UnsupportedModelError(
            f"timm ViT support (neuronsplit.relevance.vit) is not available: {err}"
        ) from err
    return vit


def _epsilon_plus_flat() -> Any:
    from zennit.composites import EpsilonPlusFlat

    return EpsilonPlusFlat()


# ------------------------------------------------------------------------------ the registry
_BUILTIN = (
    ModelFamily(
        "torchvision-resnet",
        "torchvision ResNets (resnet18..152, resnext, wide_resnet)",
        _is_torchvision_resnet,
        lambda model: [TorchvisionResNetCanonizer()],
        _epsilon_plus_flat,
    ),
    ModelFamily(
        "timm-resnet",
        "timm ResNets without attention or blur-pool blocks (resnet18..152, resnet50d, ...)",
        _is_timm_resnet,
        lambda model: [TimmResNetCanonizer()],
        _epsilon_plus_flat,
    ),
    ModelFamily(
        "timm-vit",
        "timm VisionTransformer (ViT, DeiT, DINOv2 with LayerScale and register tokens)",
        _is_timm_vit,
        lambda model: [_vit_module().TimmViTCanonizer()],
        lambda: _vit_module().TimmViTComposite(),
        lambda composite: (
            None
            if isinstance(composite, _vit_module().TimmViTComposite)
            else (
                "its LayerNorms, attention (attn @ v), token pooling and residual sums need the "
                "rules of TimmViTComposite; use TimmViTComposite(epsilon=..., gamma=..., "
                "first_rule=...) for your choice of Linear and input rules"
            )
        ),
    ),
    ModelFamily(
        "plain",
        "plain chains of Conv/Linear (BatchNorm right after them), activations, pooling, "
        "Flatten, Dropout -- no residual adds, attention or LayerNorm (e.g. the demo DigitsNet)",
        lambda model: plain_reason(model) is None,
        plain_canonizers,
        _epsilon_plus_flat,
    ),
)
_USER: list[ModelFamily] = []


def model_families() -> tuple[ModelFamily, ...]:
    """Every family, in the order they are tried (registered ones first).

    Examples
    --------
    >>> [f.name for f in model_families()][-4:]
    ['torchvision-resnet', 'timm-resnet', 'timm-vit', 'plain']
    """
    return (*_USER, *_BUILTIN)


def register_family(family: ModelFamily) -> None:
    """Add a family, tried before the built-in ones (a family of the same name is replaced).

    Examples
    --------
    >>> from zennit.composites import EpsilonPlusFlat
    >>> register_family(ModelFamily("mine", "my nets", lambda m: False, lambda m: [],
    ...                             EpsilonPlusFlat))
    >>> get_family("mine").summary
    'my nets'
    >>> _USER.clear()  # (undo the example)
    """
    if not isinstance(family, ModelFamily):
        raise ArgumentTypeError(f"family must be a ModelFamily, got {type(family).__name__}")
    _USER[:] = [family] + [f for f in _USER if f.name != family.name]


def get_family(name: str) -> ModelFamily:
    """The family called ``name``.

    Raises
    ------
    InvalidArgumentError
        For an unknown name; the message lists the known ones.
    """
    for family in model_families():
        if family.name == name:
            return family
    raise InvalidArgumentError(
        f"unknown model family {name!r}; known: {[f.name for f in model_families()]}"
    )


def _unsupported(model: nn.Module) -> UnsupportedModelError:
    listed = "\n".join(f"  * {f.name}: {f.summary}" for f in model_families())
    reason = plain_reason(model)
    return UnsupportedModelError(
        f"Zennit.for_model does not know which LRP canonizers fit {type(model).__name__}: it "
        f"is none of the supported model families\n{listed}\n"
        f"(it is not plain: {reason}).\n"
        "Pass a composite and canonizers by hand, e.g.\n"
        "  relevance = ns.Zennit(zennit.composites.EpsilonPlusFlat(), canonizers=[...])\n"
        "with canonizers that route residual adds through zennit.layer.Sum and fold BatchNorms "
        "(zennit.canonizers.SequentialMergeBatchNorm(), ...), and give it as relevance= to "
        "ns.ZennitAttribution, ns.Disentangle or ns.scan; or add a family with "
        "neuronsplit.relevance.families.register_family."
    )


def detect_family(model: nn.Module) -> ModelFamily:
    """The first family (see :func:`model_families`) whose detector accepts ``model``.

    Raises
    ------
    UnsupportedModelError
        No family fits; the message lists them and how to pass canonizers by hand.

    Examples
    --------
    >>> detect_family(nn.Sequential(nn.Linear(3, 2), nn.ReLU())).name
    'plain'
    """
    check_module(model)
    for family in model_families():
        if family.detect(model):
            return family
    raise _unsupported(model)


def family_rules(
    model: nn.Module, composite: Any = None, *, family: str | None = None
) -> tuple[Any, list[Any]]:
    """``(composite, canonizers)`` for ``model``: what :meth:`Zennit.for_model` builds on.

    ``composite=None`` takes the family's default. A composite that brings its own canonizers
    is taken as it is (the family's would be applied twice).

    Raises
    ------
    InvalidArgumentError
        A composite the family refuses (any composite but ``TimmViTComposite`` on a timm ViT);
        the message says what to use, or pass ``ns.Zennit(composite, canonizers=[...])``.

    Examples
    --------
    >>> composite, canonizers = family_rules(nn.Sequential(nn.Linear(3, 2)))
    >>> type(composite).__name__, canonizers
    ('EpsilonPlusFlat', [])
    """
    check_module(model)
    if family is not None and not isinstance(family, str):
        raise ArgumentTypeError(f"family must be a family name, got {type(family).__name__}")
    chosen = get_family(family) if family is not None else detect_family(model)
    if composite is None:
        composite = chosen.composite()
    if getattr(composite, "canonizers", None):
        return composite, []
    reason = chosen.refuses(composite) if chosen.refuses is not None else None
    if reason:
        raise InvalidArgumentError(
            f"{type(composite).__name__} cannot explain this {chosen.name} model: {reason}. "
            "To use it anyway, pass the canonizers by hand: "
            "ns.Zennit(composite, canonizers=[...])"
        )
    return composite, list(chosen.canonizers(model))
