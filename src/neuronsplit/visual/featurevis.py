"""Feature visualisation: the image that drives a unit or a subunit most.

:func:`visualise` optimises one image per reference, all in one batch, by gradient ascent on
the reference's activation (Olah et al., 2017, "Feature Visualization", Distill): the image is a
decorrelated Fourier spectrum (:mod:`~neuronsplit.visual.fourier`), seen by the model through a
random jitter, zoom and rotation at every step (:mod:`~neuronsplit.visual.transforms`) and
normalised as the model expects.

What is maximised (the *objective* of a reference, before any nonlinearity that follows):

* a unit ``"layer/u3"``: output channel 3 of the module ``layer`` -- a ``Conv2d``, a ``Linear``
  or a split layer (whose output is the merged unit);
* a subunit ``"layer/u3/k0"`` or ``"layer/u3/residual"`` of a split layer: its rows of the
  layer's ``.subunits`` output (:func:`~neuronsplit.attribution.subunit_rows`; ``t_k`` in the
  disjoint form, ``t_k + r`` in the overlap form);
* on a conv output ``(B, C, H, W)`` the spatial **mean** of the channel (lucid's ``channel``
  objective; ``position="centre"`` takes the position ``(H // 2, W // 2)`` instead); on a
  token output ``(B, T, C)`` of a ViT the mean over the **patch tokens** (the model's
  ``num_prefix_tokens`` class/register tokens are left out).

Each image's start and transformations come from its own generator, seeded from ``seed`` and
the reference's name, so the same seed gives bit-identical images (on the CPU) and an image
does not depend on which other references share the batch. The model is left as it was: eval
mode only while optimising, ``requires_grad`` switched off and restored, hooks removed.

Examples
--------
>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
>>> fv = visualise(model, ["0/u1", "3/u2"], image_shape=(1, 8, 8), steps=32, progress=False)
>>> fv.names, tuple(fv.images.shape), tuple(fv.model_input().shape)
(['0/u1', '3/u2'], (2, 1, 8, 8), (2, 1, 8, 8))
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_bool, check_choice, check_int, check_module, check_number
from .._progress import progress_bar
from ..errors import ArgumentTypeError, InputShapeError, InvalidArgumentError
from .fourier import ImageParam
from .objectives import Objective, infer_image_shape, model_outputs
from .targets import resolve_targets
from .transforms import Transforms, apply_affine

__all__ = ["visualise", "FeatureVisualisation"]


@dataclass(frozen=True)
class FeatureVisualisation:
    """The optimised images of :func:`visualise`.

    Attributes
    ----------
    names : list of str
        The references, as given (``"layer/u3"``, ``"layer/u3/k0"``, ...).
    images : Tensor
        ``(n, C, H, W)`` in [0, 1] display space, on the CPU; row ``i`` belongs to ``names[i]``.
    activations : Tensor
        ``(n,)`` float64: each reference's objective on its final image, seen without
        transformations (as :meth:`model_input` gives it).
    mean, std : tuple of float or None
        The normalisation applied before the model (None: none).
    seed, steps : int
        The settings that reproduce the images.
    """

    names: list[str]
    images: Tensor
    activations: Tensor
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    seed: int
    steps: int

    def model_input(self) -> Tensor:
        """The images as the model receives them: ``(images - mean) / std``."""
        return _normalise(self.images, self.mean, self.std)

    def activation(self, name: str) -> float:
        """The achieved activation of one reference."""
        if name not in self.names:
            raise InvalidArgumentError(f"{name!r} was not visualised; names: {self.names[:10]}")
        return float(self.activations[self.names.index(name)])


def _normalise(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None):
    if mean is None:
        return images
    m = torch.tensor(mean, dtype=images.dtype, device=images.device)[None, :, None, None]
    s = torch.tensor(std, dtype=images.dtype, device=images.device)[None, :, None, None]
    return (images - m) / s


def _check_shape(model: nn.Module, image_shape: Any) -> tuple[int, int, int]:
    if image_shape is None:
        image_shape = infer_image_shape(model)
        if image_shape is None:
            raise InvalidArgumentError(
                f"image_shape is required for a {type(model).__name__}: its input size cannot be "
                "read from the model (only timm models carry it); pass image_shape=(C, H, W), "
                "e.g. (1, 8, 8) for the demo digits"
            )
    if not isinstance(image_shape, (tuple, list, torch.Size)) or len(image_shape) != 3:
        raise ArgumentTypeError(f"image_shape must be (C, H, W), got {image_shape!r}")
    return tuple(check_int(v, "each entry of image_shape", low=1) for v in image_shape)  # type: ignore[return-value]


def _check_norm(value: Any, name: str, channels: int) -> tuple[float, ...]:
    values = [value] if isinstance(value, (int, float)) else value
    if not isinstance(values, (list, tuple, Tensor)) or len(values) not in (1, channels):
        raise InvalidArgumentError(
            f"{name} must be one number or {channels} (one per channel of the image), got {value!r}"
        )
    out = [check_number(float(v), f"each entry of {name}") for v in values]
    if name == "std" and min(out) <= 0:
        raise InvalidArgumentError(f"std must be > 0, got {value!r}")
    return tuple(out * channels if len(out) == 1 else out)


def _norm_from_model(model: nn.Module, mean: Any, std: Any, channels: int):
    if (mean is None) != (std is None):
        raise InvalidArgumentError("pass both mean and std, or neither")
    if mean is None:
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("mean") is not None and cfg.get("std") is not None:
            mean, std = cfg["mean"], cfg["std"]
        else:
            return None, None
    return _check_norm(mean, "mean", channels), _check_norm(std, "std", channels)


def _ref_seed(seed: int, name: str) -> int:
    """A per-reference seed that is stable across processes (``hash()`` is salted)."""
    return zlib.crc32(f"{seed}:{name}".encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


def visualise(
    model: nn.Module, refs: Sequence[Any] | str, *, image_shape: Sequence[int] | None = None,
    steps: int = 256, lr: float = 0.05, seed: int = 0, decorrelate: bool = True,
    transforms: bool = True, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None, progress: bool = True, position: str = "mean",
) -> FeatureVisualisation:  # fmt: skip
    """Optimise one image per reference to maximise its activation (all in one batch).

    Parameters
    ----------
    model : nn.Module
        A split model (units, subunits and residuals) or any model (units only). Not modified.
    refs : reference or sequence of references
        Units (``"layer/u3"``, ``("layer", 3)``), subunits of a split layer (``"layer/u3/k0"``,
        ``"layer/u3/residual"``, a :class:`~neuronsplit.SubunitRef`, ``(layer, unit, k)``);
        every spelling is listed in :mod:`neuronsplit.visual.targets`, shared with
        :func:`~neuronsplit.visual.reference_images`.
    image_shape : (C, H, W), optional
        Read from a timm model (``patch_embed.img_size`` and its input channels, else
        ``pretrained_cfg["input_size"]``); required otherwise.
    steps : int, default 256
        Adam steps.
    lr : float, default 0.05
        Adam's learning rate (lucid's).
    seed : int, default 0
        Fixes the random starts and transformations: the same seed gives the same images.
    decorrelate : bool, default True
        Decorrelated Fourier parameterisation; ``False`` optimises the pixels directly.
    transforms : bool, default True
        Random jitter, zoom and rotation at every step (scaled to the image size).
    mean, std : sequence of float, optional
        The normalisation the model expects: it sees ``(image - mean) / std`` of the [0, 1]
        image. Default: a timm model's ``pretrained_cfg`` mean and std where it has them, else
        none (the image goes in as it is, as for the demo models).
    progress : bool, default True
        Show a progress bar over the steps.
    position : {"mean", "centre"}, default "mean"
        The objective of a conv channel: its spatial mean, or its value at the centre.

    Returns
    -------
    FeatureVisualisation

    Raises
    ------
    UnknownSubunitError, UnknownLayerError, UnsupportedLayerError
        A reference the model does not contain (the errors of
        :func:`~neuronsplit.visual.reference_images` for the same ``refs``).
    InvalidArgumentError, ArgumentTypeError
        Bad settings, empty or repeated ``refs``, or no ``image_shape`` where the model does
        not carry one.
    InputShapeError
        The model fails on an input of ``image_shape`` (its own error is chained).
    """
    check_module(model)
    steps = check_int(steps, "steps", low=1)  # type: ignore[assignment]
    lr = check_number(lr, "lr", low=0, low_open=True)
    seed = check_int(seed, "seed", low=0)  # type: ignore[assignment]
    for flag, name in ((decorrelate, "decorrelate"), (transforms, "transforms")):
        check_bool(flag, name)
    check_bool(progress, "progress")
    check_choice(position, "position", ("mean", "centre"))
    shape = _check_shape(model, image_shape)
    mean_t, std_t = _norm_from_model(model, mean, std, shape[0])
    targets = [Objective.of(model, t, position) for t in resolve_targets(model, refs)]
    names = [t.name for t in targets]
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    seeds = [_ref_seed(seed, n) for n in names]

    training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        for p in grads:
            p.requires_grad_(False)  # only the image needs gradients
        with torch.inference_mode(False), torch.enable_grad():
            param = ImageParam(seeds, shape, decorrelate=decorrelate, device=device)
            images = _optimise(
                model, targets, param, steps, lr, seeds, transforms, mean_t, std_t, dtype,
                progress,
            )  # fmt: skip
        with torch.no_grad():
            final = _normalise(images, mean_t, std_t).to(dtype)
            activations = model_outputs(model, targets, final).detach()
    finally:
        for p, flag in grads.items():
            p.requires_grad_(flag)
        for m, flag in training.items():
            m.training = flag
    return FeatureVisualisation(
        names, images.detach().float().cpu(), activations.double().cpu(), mean_t, std_t, seed,
        steps,
    )  # fmt: skip


def _optimise(
    model: nn.Module, targets: list[Objective], param: ImageParam, steps: int, lr: float,
    seeds: list[int], transforms: bool, mean: Any, std: Any, dtype: torch.dtype, progress: bool,
) -> Tensor:  # fmt: skip
    """Adam on the image parameters; returns the final images ``(n, C, H, W)`` in [0, 1]."""
    optimiser = torch.optim.Adam(param.params, lr=lr)
    _, h, w = param.shape
    ranges = Transforms.for_size(h, w)
    # the transformations' own generators, apart from the starts' (drawn in ImageParam)
    generators = [torch.Generator().manual_seed(s + 1) for s in seeds]
    for step in progress_bar(
        range(steps), desc="feature visualisation", unit="step", enabled=progress
    ):
        optimiser.zero_grad(set_to_none=True)
        x = param()
        if transforms:
            x = apply_affine(x, ranges.sample(generators))
        x = _normalise(x, mean, std).to(dtype)
        try:
            objective = model_outputs(model, targets, x)
        except RuntimeError as err:
            if step:
                raise
            raise InputShapeError(
                f"the model failed on its first pass, on inputs of shape {tuple(x.shape)} "
                f"(image_shape {param.shape}): {err}. If the shape is wrong, pass the "
                "image_shape (C, H, W) the model expects"
            ) from err
        (-objective.sum()).backward()
        optimiser.step()
    with torch.no_grad():
        return param()
