"""Captum Insights glue: compare unit and subunit attributions in the browser.

Captum Insights shipped last in captum 0.8.0 (it was removed in 0.9.0), so it is an optional
extra: ``pip install "neuronsplit[insights]"`` (captum==0.8.0, numpy<2, flask, flask-compress).
Nothing here imports ``captum.insights`` at module import time.

What this module adds, and which Insights hazards it handles (numbers refer to the ecosystem
reference, section 3.6):

* :func:`register` puts a :class:`~neuronsplit.Disentangle` method into Insights' two method
  dicts *in place* (rebinding them would have no effect) and returns a handle that removes it
  again. Insights constructs methods as ``cls(model)`` (1), so the class is made by a factory
  that binds the split model and the subunit choices; it is called through
  ``attribute.__wrapped__`` (2), so ``attribute`` is decorated with ``captum.log.log_usage``;
  the target arrives as a 0-d tensor (10), which Disentangle accepts. One method with a
  ``subunit`` drop-down (``"fc2/u3/k0"``, ..., ``"fc2/u3/residual"``, ``"fc2/u3/unit"``)
  lets the user switch between the subunits and the whole unit.
* :class:`SubunitImageFeature` replaces ``ImageFeature`` for greyscale inputs: Insights'
  ``squeeze().permute(1, 2, 0)`` fails on 1-channel images (4), and an all-zero map makes
  Captum's normalisation raise ``AssertionError`` (5) -- a subunit that is silent on an image
  is the normal case here, so such maps are drawn as an empty heat map instead.
* :func:`make_visualizer` takes any model with a plan and a dataset (the demo model and the
  digits are the default), draws the images once (seeded, or the user's indices) and shows
  that same batch on every Fetch, so one image can be compared across the unit, its
  subunits and Integrated Gradients. It refuses missing labels (6: Insights would loop
  forever), checks that there is a class name for every model output and at least two
  outputs (8, 9), and bounds ``visualize()`` to one pass over the batch, so a UI filter that
  matches nothing returns an empty page instead of hanging the request (7). Each distinct
  warning of a Fetch (Captum's ``torch.no_grad`` one comes on every call) is shown once
  (:class:`WarningsOnce`).
* :func:`serve` runs Flask through ``werkzeug.serving.make_server`` in a **daemon** thread and
  returns a handle with ``shutdown()``; Captum's own ``serve()`` starts a non-daemon thread and
  keeps global state (12). It checks that the front end is built (13).

The parts live in private modules (all names importable from here): ``_display``
(greyscale images and all-zero maps), ``_register`` (method registration and the
generated Disentangle subclass), ``_data`` (the fixed batch), ``_app`` (:class:`InsightsApp`,
the bounded visualizer, :class:`WarningsOnce`), ``_visualizer`` (the body of
:func:`make_visualizer`) and ``_server`` (the werkzeug daemon server). The command,
``neuronsplit insights``, is :mod:`neuronsplit.cli_insights` (outside this package, so that
the ``neuronsplit`` parser is built without importing captum).

Examples
--------
>>> from neuronsplit.insights import make_visualizer, serve  # doctest: +SKIP
>>> with make_visualizer() as app, serve(app) as server:      # doctest: +SKIP
...     print("open", server.url)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..attribution import SubunitRef
from ..errors import MissingExtraError
from ..plan import SplitPlan
from ._app import InsightsApp, WarningsOnce
from ._display import feature_class as _feature_class
from ._register import UNIT_CHOICE as UNIT_CHOICE  # re-export: "unit" drop-down suffix
from ._register import InsightsRegistration
from ._register import register_method as _register_method
from ._server import InsightsServer
from ._server import start_server as _start_server

__all__ = [
    "require_insights",
    "frontend_built",
    "SubunitImageFeature",  # noqa: F822 - built lazily by __getattr__
    "InsightsRegistration",
    "register",
    "InsightsApp",
    "WarningsOnce",
    "make_visualizer",
    "InsightsServer",
    "serve",
]


def __getattr__(name: str) -> Any:
    # SubunitImageFeature subclasses an Insights class, so it is built on first access only
    if name == "SubunitImageFeature":
        require_insights()
        return _feature_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_INSTALL_HINT = (
    'Captum Insights needs the insights extra: pip install "neuronsplit[insights]" '
    "(captum==0.8.0 with numpy<2, flask and flask-compress; Insights was removed in captum 0.9.0)"
)
DEFAULT_METHOD_NAME = "Disentangle (subunits)"


def require_insights() -> Any:
    """Import and return ``captum.insights.attr_vis``; raise :class:`MissingExtraError` if absent.

    Raises
    ------
    MissingExtraError
        With the ``pip install`` line, when captum has no Insights (captum >= 0.9, or Flask or
        flask-compress missing).

    Examples
    --------
    >>> require_insights().__name__
    'captum.insights.attr_vis'
    """
    try:
        import captum.insights.attr_vis as attr_vis
        import captum.insights.attr_vis.config  # noqa: F401 - the method dicts
        import captum.insights.attr_vis.server  # noqa: F401 - the Flask app
    except ImportError as err:
        raise MissingExtraError(f"{_INSTALL_HINT}. Import failed with: {err}") from err
    return attr_vis


def _frontend_index() -> Path:
    attr_vis = require_insights()
    return Path(attr_vis.__file__).parent / "frontend" / "build" / "index.html"


def frontend_built() -> bool:
    """Whether the installed captum ships the pre-built Insights web front end.

    The PyPI wheel of captum 0.8.0 contains it; a source install built without
    ``BUILD_INSIGHTS=1`` does not, and then ``GET /`` fails with ``TemplateNotFound``.

    Examples
    --------
    >>> isinstance(frontend_built(), bool)
    True
    """
    return _frontend_index().is_file()


def register(
    split_model: nn.Module,
    *,
    name: str = DEFAULT_METHOD_NAME,
    subunits: Sequence[SubunitRef] | None = None,
    relevance: Any = "grad_x_act",
) -> InsightsRegistration:
    """Register :class:`~neuronsplit.Disentangle` as a Captum Insights attribution method.

    The method has one argument, ``subunit``, a drop-down with every subunit of every split
    unit (``"<layer>/u<unit>/k<k>"``, ``".../residual"``) and the whole unit
    (``".../unit"``, the unit's conditional attribution, equal to the sum over its subunits).
    Insights constructs the class as ``cls(model)``; a split model passed that way is used,
    any other model (e.g. the original next to the split one) is replaced by ``split_model``,
    which computes the same function.

    Parameters
    ----------
    split_model : nn.Module
        A split model.
    name : str
        Name in the Insights method drop-down; must not be taken already.
    subunits : sequence of SubunitRef, optional
        Restrict the drop-down to these subunits (default: all).
    relevance : "grad_x_act" or zennit Composite
        Passed to :class:`~neuronsplit.Disentangle`.

    Returns
    -------
    InsightsRegistration
        Call ``.remove()`` (or use it as a context manager) to unregister.

    Raises
    ------
    MissingExtraError
        Without Captum Insights.
    ValueError
        If ``name`` is already registered.

    Examples
    --------
    >>> from torch import nn
    >>> from neuronsplit.plan import SplitPlan, UnitSplit
    >>> from neuronsplit.nn import apply_plan
    >>> m = apply_plan(nn.Sequential(nn.Linear(2, 3)), SplitPlan([UnitSplit("0", 1, [[0], [1]])]))
    >>> with register(m, name="Subunits (doctest)") as reg:
    ...     reg.choices
    ('0/u1/k0', '0/u1/k1', '0/u1/residual', '0/u1/unit')
    """
    require_insights()
    return _register_method(split_model, name=name, subunits=subunits, relevance=relevance)


def make_visualizer(
    model: nn.Module | None = None,
    plan: SplitPlan | None = None,
    *,
    data: Any = None,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    indices: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = 4,
    seed: int = 0,
    input_transforms: Sequence[Callable[[Tensor], Tensor]] = (),
    feature_name: str | None = None,
    relevance: Any = "grad_x_act",
    method_name: str = DEFAULT_METHOD_NAME,
    cache_dir: str | None = None,
) -> InsightsApp:
    """Build a Captum Insights visualizer of a split model with Disentangle registered.

    Works for any model with a plan (a timm or torchvision ResNet, a ViT, ...). With no
    arguments: the demo model (:func:`neuronsplit.demo.get_demo_model`), the plan from
    :func:`neuronsplit.demo.demo_plan`, and the digits test split. Captum's own methods
    (Integrated Gradients, Saliency, ...) stay available next to the subunit method.

    The images are drawn **once** -- ``batch_size`` of them, by a generator seeded with
    ``seed``, or the ones at ``indices`` -- and every Fetch shows that same batch, so one image
    can be compared across the unit, its subunits and Captum's methods
    (``app.images``, ``app.labels``, ``app.indices``). Each distinct warning of the attribution
    code (e.g. Captum's ``torch.no_grad`` one) is shown once, not on every Fetch.

    Parameters
    ----------
    model : nn.Module, optional
        An unsplit model (then ``plan`` is applied to a copy; the model is not changed) or a
        split model. Default: the demo model.
    plan : SplitPlan, optional
        Required for an unsplit model other than the demo model (for the demo model it
        defaults to ``neuronsplit.demo.demo_plan(model)``).
    data : Dataset or DataLoader, optional
        A map-style dataset of ``(image, label)`` pairs (or a DataLoader over one, e.g.
        :func:`neuronsplit.image_folder_loader`). A transform ending in torchvision's
        ``Normalize`` is split: the images are shown without it, the model gets it.
    images, labels : Tensor, optional
        Instead of ``data``: inputs ``(N, C, H, W)`` in [0, 1] and integer labels ``(N,)``.
        Labels are required (Insights skips unlabelled samples and then waits forever).
    indices : sequence of int, optional
        Show these samples of the data (default: ``batch_size`` drawn at random).
    classes : sequence of str, optional
        One name per model output (default the digit names for the demo, the dataset's
        ``classes`` (ImageFolder folders), else ``"0"``, ``"1"``, ...).
    batch_size : int
        Number of images drawn when ``indices`` is not given.
    seed : int
        Seed of that draw.
    input_transforms : sequence of callable
        Applied to each ``(C, H, W)`` image before the model (e.g. a normalisation), not to
        the picture shown.
    feature_name : str, optional
        Name of the image input in Insights (default ``"Digit"`` for the demo, else ``"Image"``).
    relevance : "grad_x_act" or zennit Composite
        Backend of the Disentangle method.
    method_name : str
        Name of the Disentangle method in Insights.
    cache_dir : str, optional
        Cache of the demo model.

    Returns
    -------
    InsightsApp
        Close it (or use ``with``) to unregister the method.

    Raises
    ------
    MissingExtraError
        Without Captum Insights.
    PlanError
        No plan for a model that is not split; a plan whose layers the model lacks
        (:class:`~neuronsplit.errors.PlanMismatchError`).
    InvalidArgumentError
        No data for a non-demo model, an empty dataset, indices out of range.
    InvalidTargetError
        Missing labels, labels out of range, too few class names, or a model with one output.

    Examples
    --------
    >>> loader = ns.image_folder_loader("val/", model)                 # doctest: +SKIP
    >>> app = make_visualizer(model, plan, data=loader, indices=[0, 5]) # doctest: +SKIP
    >>> app.choices[:2], app.indices                                    # doctest: +SKIP
    (('layer4.1.conv2/u5/k0', 'layer4.1.conv2/u5/k1'), (0, 5))
    >>> app.close()                                                     # doctest: +SKIP
    """
    require_insights()
    from ._visualizer import build_visualizer

    return build_visualizer(
        model, plan, data=data, images=images, labels=labels, indices=indices, classes=classes,
        batch_size=batch_size, seed=seed, input_transforms=input_transforms,
        feature_name=feature_name, relevance=relevance, method_name=method_name,
        cache_dir=cache_dir,
    )  # fmt: skip


def serve(
    app: InsightsApp | Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    blocking: bool = False,
    quiet: bool = True,
) -> InsightsServer:
    """Serve Captum Insights for ``app`` without blocking (unless asked) and without globals leaking.

    Parameters
    ----------
    app : InsightsApp or captum.insights.AttributionVisualizer
        What to show.
    host : str
        Interface; the default serves only this machine.
    port : int
        ``0`` picks a free port (see ``InsightsServer.port``).
    blocking : bool
        Serve in this thread until interrupted (Ctrl+C), then shut down.
    quiet : bool
        Do not log every request.

    Returns
    -------
    InsightsServer
        Running in a daemon thread (so it never keeps the interpreter alive); call
        ``shutdown()`` or use it as a context manager.

    Raises
    ------
    MissingExtraError
        Without Captum Insights, or when its web front end is not built.

    Examples
    --------
    >>> with serve(make_visualizer()) as server:  # doctest: +SKIP
    ...     print(server.url)
    """
    require_insights()
    if not frontend_built():
        raise MissingExtraError(
            f"the Captum Insights front end is not built in this captum install "
            f"({_frontend_index()} is missing); install the captum 0.8.0 wheel from PyPI "
            '(pip install "neuronsplit[insights]") or build it with BUILD_INSIGHTS=1'
        )
    visualizer = app.visualizer if isinstance(app, InsightsApp) else app
    return _start_server(visualizer, host=host, port=port, blocking=blocking, quiet=quiet)
