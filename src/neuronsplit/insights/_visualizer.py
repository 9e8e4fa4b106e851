"""Building the Insights visualizer of any split model (body of ``make_visualizer``).

Private module of :mod:`neuronsplit.insights`; the public entry point with its documentation
is :func:`neuronsplit.insights.make_visualizer`, which checks that Captum Insights is installed
first. Steps: the model (the demo model when none is given) and its split, the fixed batch
(:mod:`._data`), the checks Insights needs (labels, one class name per output, >= 2 outputs),
then the Disentangle registration and the bounded visualizer (:mod:`._app`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import eval_mode
from ..errors import InvalidArgumentError, InvalidTargetError, PlanError
from ..nn import iter_split_layers
from ..plan import SplitPlan
from ._app import (
    InsightsApp,
    _bounded_visualizer_class,
    _default_plan,
    _repeat_batch,
    _softmax,
    _zero_baseline,
)
from ._data import fixed_batch
from ._display import feature_class
from ._register import register_method

__all__ = ["build_visualizer"]


def _split_model(model: nn.Module | None, plan: SplitPlan | None, cache_dir: Any) -> Any:
    """(split model, its plan, whether it is the demo model)."""
    from ..attribution import Disentangle
    from ..demo import DigitsNet
    from ..nn import plan_of

    if model is None:
        from ..demo import get_demo_model

        model = get_demo_model(cache_dir)
    is_demo = isinstance(model, DigitsNet)
    if plan is None and not any(iter_split_layers(model)):
        if not is_demo:
            raise PlanError(
                f"{type(model).__name__} has no split layers and no plan was given; pass plan= "
                "(a SplitPlan from ns.plan_split, ns.discover or SplitPlan.load) or a split model"
            )
        plan = _default_plan(model)
    split = Disentangle(model, plan).model  # applies the plan to a copy and validates it
    return split, plan_of(split), is_demo


def _transformed(images: Tensor, transforms: Sequence[Callable[[Tensor], Tensor]]) -> Tensor:
    """What the model sees: Insights applies the feature's transforms image by image."""
    out = []
    for image in images:
        for transform in transforms:
            image = transform(image)
        out.append(image)
    return torch.stack(out)


def build_visualizer(
    model: nn.Module | None,
    plan: SplitPlan | None,
    *,
    data: Any,
    images: Tensor | None,
    labels: Tensor | None,
    indices: Sequence[int] | None,
    classes: Sequence[str] | None,
    batch_size: int,
    seed: int,
    input_transforms: Sequence[Callable[[Tensor], Tensor]],
    feature_name: str | None,
    relevance: Any,
    method_name: str,
    cache_dir: Any,
) -> InsightsApp:
    """See :func:`neuronsplit.insights.make_visualizer`."""
    from ..demo import DIGIT_CLASSES, load_digits

    split, plan, is_demo = _split_model(model, plan, cache_dir)
    if data is None and images is None:
        if labels is not None:
            raise InvalidTargetError("labels were given without images; pass both or neither")
        if not is_demo:
            raise InvalidArgumentError(
                f"no images to show for {type(split).__name__}: pass data= (a Dataset or "
                "DataLoader of (image, label) pairs, e.g. ns.image_folder_loader(root, model)) "
                "or images= and labels="
            )
        digits = load_digits("test")
        images, labels = digits.images, digits.labels
    batch = fixed_batch(data, images, labels, indices=indices, batch_size=batch_size, seed=seed)
    if batch.images.dim() != 4:
        raise InvalidArgumentError(
            f"Insights shows images (N, C, H, W); got shape {tuple(batch.images.shape)}"
        )
    transforms = [*batch.input_transforms, *input_transforms]
    with torch.no_grad(), eval_mode(split):  # a model in train mode keeps its statistics
        n_out = int(split(_transformed(batch.images[:1], transforms)).reshape(1, -1).shape[1])
    if n_out < 2:
        raise InvalidTargetError(
            f"the model has {n_out} output; Insights needs one score per class (>= 2)"
        )
    if classes is None:
        classes = DIGIT_CLASSES if is_demo else batch.classes or [str(i) for i in range(n_out)]
    classes = [str(c) for c in classes]
    if len(classes) < n_out:
        raise InvalidTargetError(
            f"{len(classes)} class names for {n_out} model outputs; give one name per output "
            "(classes=, or a model with as many outputs as the data have class folders)"
        )
    bad = batch.labels[(batch.labels < 0) | (batch.labels >= len(classes))]
    if bad.numel():
        raise InvalidTargetError(
            f"label {int(bad[0])} is out of range for {len(classes)} classes (0..{len(classes) - 1})"
        )
    name = feature_name or ("Digit" if is_demo else "Image")
    feature = feature_class()(name, baseline_transforms=[_zero_baseline],
                              input_transforms=transforms)  # fmt: skip
    registration = register_method(split, name=method_name, subunits=None, relevance=relevance)
    try:
        visualizer = _bounded_visualizer_class()(
            models=[split],
            classes=classes,
            features=[feature],
            dataset=_repeat_batch(batch.images, batch.labels),
            score_func=_softmax,
        )
        # one pass over the fixed batch: a filter that matches nothing must not hang, and an
        # image must not be shown twice
        visualizer.max_batches = 1
    except BaseException:
        registration.remove()
        raise
    return InsightsApp(visualizer, split, plan, registration,
                       batch.images, batch.labels, batch.indices)  # fmt: skip
