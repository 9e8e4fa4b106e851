"""Reference images: the samples a unit or subunit responds to most, cropped to where it looks.

For every unit, subunit and residual, :func:`reference_images` picks the ``k`` samples with the
largest activation (the row's largest value over positions / tokens) or the largest relevance
(grad x activation for the target logit), and crops each to the region the row saw at its
maximising position, the way zennit-crp shows reference images and ViT patch views:

* a conv position: its receptive field, found exactly as a gradient support on a linearised
  copy of the model (:mod:`neuronsplit.visual.receptive`);
* a ViT token: its patch of ``model.patch_embed``'s grid (a prefix token -- class token,
  register -- has none: the whole image, and a note);
* a ``(B, C)`` Linear: the whole image.

Units come from a scan's :class:`~neuronsplit.stats.TopN` reservoirs when one is given (no
pass over the data); subunits and residuals need one pass, for all of them together
(:func:`~neuronsplit.visual.selection.top_samples`). :func:`neuronsplit.plots.reference_figure`
draws a :class:`ReferenceSet`.

Examples
--------
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
>>> images = torch.rand(10, 1, 9, 9)
>>> refs = reference_images(net, images, ["2/u0"], k=3, progress=False)
>>> [(r.box[2] - r.box[0], tuple(r.image.shape)) for r in refs["2/u0"]]
[(5, (1, 5, 5)), (5, (1, 5, 5)), (5, (1, 5, 5))]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_bool, check_choice, check_int, check_module
from ..capture import capture, eval_mode, model_device
from ..errors import ArgumentTypeError
from ..stats import ScanResult
from .receptive import Box, linearised_copy, patch_grid, receptive_boxes, token_box
from .selection import dataset_size, read_item, row_tensor, top_samples
from .targets import Target, resolve_targets

__all__ = ["ReferenceImage", "ReferenceSet", "reference_images"]


@dataclass(frozen=True)
class ReferenceImage:
    """One reference image of a unit or subunit.

    Attributes
    ----------
    index : int
        Position of the sample in the dataset.
    value : float
        What it was ranked by: the row's largest activation, or its relevance.
    position : int
        Where in the layer output: conv pixel ``h * W + w``, token index, or 0.
    box : (int, int, int, int)
        ``(top, left, bottom, right)`` of the region shown, in input pixels (bottom and right
        exclusive): the receptive field, the patch, or the whole image.
    image : Tensor
        ``(C, h, w)``: the crop, or the whole image with ``crop=False``.
    heatmap : Tensor or None
        ``(h, w)`` grad x input of the row at ``position``, cropped like ``image``.
    note : str
        Why the image may not mean what it seems (a prefix token, a unit that never activates).
    label : int or None
        The sample's label, where the dataset has one.
    """

    index: int
    value: float
    position: int
    box: Box
    image: Tensor
    heatmap: Tensor | None = None
    note: str = ""
    label: int | None = None


class ReferenceSet(Mapping[str, list[ReferenceImage]]):
    """Reference images by name (``"layer/u3"``, ``"layer/u3/k0"``, ...), in the order asked.

    Attributes
    ----------
    by : {"activation", "relevance"}
    target : {"label", "prediction"}
        The logit relevances explain.
    sources : dict of str to str
        ``"scan"`` (read from a scan's reservoirs) or ``"pass"`` (one pass over the dataset).
    notes : dict of str to str
        Per name, what holds for all its images (empty: nothing to say).
    """

    def __init__(
        self, images: Mapping[str, Sequence[ReferenceImage]], *, by: str = "activation",
        target: str = "label", sources: Mapping[str, str] | None = None,
        notes: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        self._images = {str(k): list(v) for k, v in images.items()}
        self.by = by
        self.target = target
        self.sources = dict(sources or {})
        self.notes = {name: (notes or {}).get(name, "") for name in self._images}

    def __getitem__(self, name: str) -> list[ReferenceImage]:
        return self._images[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def indices(self) -> dict[str, list[int]]:
        """``{name: sample indices}``, e.g. for :func:`neuronsplit.plots.image_grid`."""
        return {name: [r.index for r in refs] for name, refs in self._images.items()}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n!r}: {len(v)}" for n, v in self._images.items())
        return f"ReferenceSet(by={self.by!r}, {{{sizes}}})"


def _from_scan(
    scan: ScanResult | None, t: Target, by: str, k: int, target: str
) -> tuple[Tensor, Tensor, Tensor] | None:
    """The unit's top samples from the scan's reservoir, or None where it cannot give them."""
    if scan is None or t.subunit is not None or t.layer not in scan.layers:
        return None
    if by == "relevance" and (scan.relevance != "grad_x_act" or scan.target != target):
        return None  # the reservoir ranks another relevance
    stats = scan.layers[t.layer]
    top = stats.top_activation if by == "activation" else stats.top_relevance
    if top is None or t.unit >= top.values.shape[0]:
        return None
    filled = int((top.index[t.unit] >= 0).sum())
    if top.n < k and filled == top.n:
        return None  # a full reservoir smaller than k may miss samples
    return top.top(t.unit, k)


def _probe_rank(model: nn.Module, layer: str, image: Tensor) -> tuple[int, ...]:
    """Shape of ``layer``'s output for one image (one forward pass, stopped at the layer)."""
    x = image.unsqueeze(0)
    device = model_device(model)
    with eval_mode(model), torch.no_grad(), capture(model, [layer], stop=True) as cap:
        cap.forward(model, x.to(device) if device is not None else x)
        return tuple(cap.output(layer).shape)


class _Boxes:
    """Boxes of positions, per layer: receptive fields (convs), patches (tokens), whole images."""

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self._work: nn.Module | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}

    def boxes(
        self, t: Target, images: Sequence[Tensor], positions: Sequence[int]
    ) -> list[tuple[Box, str]]:
        hw = tuple(_as_chw(images[0]).shape[1:])
        whole: Box = (0, 0, int(hw[0]), int(hw[1]))
        if t.kind == "conv2d":
            if self._work is None:
                self._work = linearised_copy(self.model)
            shape = tuple(images[0].shape)
            found = receptive_boxes(
                self.model, t.layer, shape, positions, batch_size=self.batch_size, work=self._work
            )
            return [(found[int(p)], "") for p in positions]
        if t.layer not in self._shapes:
            self._shapes[t.layer] = _probe_rank(self.model, t.layer, images[0])
        shape = self._shapes[t.layer]
        if len(shape) == 2:
            return [(whole, "")] * len(positions)
        grid = patch_grid(self.model, hw) if len(shape) == 3 else None
        if grid is None or shape[1] != grid[0] + grid[1] * grid[2]:
            note = (
                f"no patch grid for the {shape[1:-1]} tokens of layer {t.layer!r}: the whole "
                "image is shown"
            )
            return [(whole, note)] * len(positions)
        return [token_box(grid, int(p), hw) for p in positions]


def _as_chw(item: Tensor) -> Tensor:
    """A sample as ``(C, H, W)``: an ``(H, W)`` image gets one channel, a feature vector
    ``(F,)`` is a ``1 x F`` image."""
    if item.dim() >= 3:
        return item
    return item.reshape(1, *([1] * (2 - item.dim())), *item.shape)


def _heatmaps(model: nn.Module, t: Target, images: Tensor, positions: Tensor) -> Tensor:
    """Grad x input of the row at each image's position (input-shaped)."""
    device = model_device(model)
    x = (images.to(device) if device is not None else images).clone().requires_grad_(True)
    names = [t.layer] + ([f"{t.layer}.subunits"] if t.reads_rows else [])
    with eval_mode(model), torch.enable_grad(), \
            capture(model, names, grad=True, stop=True) as cap:  # fmt: skip
        cap.forward(model, x)
        rows = row_tensor(cap.output(t.layer), cap.output(names[-1]), [t])[:, 0]
        picked = rows.gather(1, positions.to(rows.device).view(-1, 1))
        (grad,) = torch.autograd.grad(picked.sum(), x)
    return (x.detach() * grad).cpu()


def _notes(values: Tensor, k: int, by: str) -> str:
    notes = []
    if values.numel() < k:
        notes.append(f"only {values.numel()} samples (k={k})")
    if values.numel() and float(values.max()) <= 0:
        notes.append(
            "never activates: its largest value is <= 0 on every image (the least negative shown)"
            if by == "activation"
            else "no positive relevance on any image (the least negative shown)"
        )
    if values.numel() > 1 and float(values[0]) == float(values[-1]):
        notes.append("all shown tie (e.g. a constant row): which samples are shown is arbitrary")
    return "; ".join(notes)


def reference_images(
    model: nn.Module, dataset: Any, refs: Any, *, by: str = "activation", k: int = 8,
    scan: ScanResult | None = None, crop: bool = True, heatmap: bool = False,
    target: str = "label", batch_size: int = 64, progress: bool = True,
) -> ReferenceSet:  # fmt: skip
    """The top ``k`` samples of each unit / subunit, cropped to where it looks.

    Parameters
    ----------
    model : nn.Module
        A split model (:func:`neuronsplit.apply_plan`) or a plain one (then only units). Not
        modified; run in eval mode.
    dataset : Tensor or indexable
        ``(N, C, H, W)`` images, or items that are images or ``(image, label, ...)`` tuples;
        indices are positions in it (the order a scan's loader went through it).
    refs : reference or sequence of references
        Units (``"layer/u3"``, ``("layer", 3)``), subunits (``"layer/u3/k0"``,
        ``"layer/u3/residual"``, a :class:`~neuronsplit.SubunitRef`, ``(layer, unit, k)``);
        every spelling is listed in :mod:`neuronsplit.visual.targets`, shared with
        :func:`~neuronsplit.visual.visualise`.
    by : {"activation", "relevance"}
        ``"activation"``: the row's largest value over positions / tokens. ``"relevance"``: its
        grad x activation for the target logit (``coef * row * dy/dz_unit``, summed over
        positions; the maximising position is that of the largest element).
    k : int, default 8
        Images per reference (fewer if the dataset has fewer).
    scan : ScanResult, optional
        Its reservoirs give the units' samples without a pass (for ``by="relevance"`` only a
        grad x act scan with the same ``target``; a reservoir must hold ``k`` samples).
    crop : bool, default True
        Crop to the box; False keeps the whole image (``box`` still says where it looked).
    heatmap : bool, default False
        Also compute each image's grad x input of the row at the maximising position.
    target : {"label", "prediction"}
        Which logit relevances explain: the dataset's label, or the model's prediction.
    batch_size : int, default 64
    progress : bool, default True
        Show a progress bar for the pass over the dataset.

    Returns
    -------
    ReferenceSet

    Raises
    ------
    UnknownSubunitError, UnknownLayerError, UnsupportedLayerError
        A reference that does not exist (the message says what does).
    InvalidArgumentError, ArgumentTypeError
        ``k < 1``, an unknown ``by``/``target``, an empty dataset or ``refs``, a sample index
        (from ``scan``) that the dataset does not have.
    InvalidTargetError
        ``by="relevance"`` with ``target="label"`` on a dataset without labels.
    """
    check_module(model)
    check_choice(by, "by", ("activation", "relevance"))
    check_int(k, "k", low=1)
    check_choice(target, "target", ("label", "prediction"))
    check_int(batch_size, "batch_size", low=1)
    for flag, name in ((crop, "crop"), (heatmap, "heatmap"), (progress, "progress")):
        check_bool(flag, name)
    if scan is not None and not isinstance(scan, ScanResult):
        raise ArgumentTypeError(f"scan must be a ScanResult or None, got {type(scan).__name__}")
    if not isinstance(dataset, Tensor) and not hasattr(dataset, "__getitem__"):
        dataset_size(dataset)  # raises the ArgumentTypeError that names the accepted forms
    targets = resolve_targets(model, refs)
    found = {t.name: hit for t in targets if (hit := _from_scan(scan, t, by, k, target))}
    rest = [t for t in targets if t.name not in found]
    if rest:
        found.update(top_samples(model, dataset, rest, by=by, k=k, target=target,
                                 batch_size=batch_size, progress=progress))  # fmt: skip
    items: dict[int, tuple[Tensor, int | None]] = {}
    boxes = _Boxes(model, batch_size)
    out: dict[str, list[ReferenceImage]] = {}
    notes = {}
    for t in targets:
        values, index, position = found[t.name]
        notes[t.name] = _notes(values, k, by)
        for i in index.tolist():
            if i not in items:
                items[i] = read_item(dataset, i)
        images = [items[i][0] for i in index.tolist()]
        if not images:
            out[t.name] = []
            continue
        placed = boxes.boxes(t, images, position.tolist())
        heats: list[Tensor | None] = [None] * len(images)
        if heatmap:
            heats = [_as_chw(h).sum(0) for h in _heatmaps(model, t, torch.stack(images), position)]
        refs_t = []
        for j, (i, v, p) in enumerate(
            zip(index.tolist(), values.tolist(), position.tolist(), strict=True)
        ):
            (top, left, bottom, right), note = placed[j]
            image = _as_chw(images[j])
            heat = heats[j]
            if crop:
                image = image[..., top:bottom, left:right]
                heat = None if heat is None else heat[top:bottom, left:right]
            note = "; ".join(n for n in (note, notes[t.name]) if n)
            refs_t.append(ReferenceImage(int(i), float(v), int(p), (top, left, bottom, right),
                                         image.detach().clone(), heat, note, items[i][1]))  # fmt: skip
        out[t.name] = refs_t
    sources = {t.name: ("pass" if t in rest else "scan") for t in targets}
    return ReferenceSet(out, by=by, target=target, sources=sources, notes=notes)
