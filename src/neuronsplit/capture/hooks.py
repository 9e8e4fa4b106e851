"""The one way neuronsplit hooks layers: :func:`capture`.

Every pass that needs a layer's input or output (the scan, rho scoring, concept fractions,
equivalence checks, subunit attribution, and later discovery and feature visualisation) opens a
``capture`` context. It handles, in one place, what each of them once did on its own:

* **graph start for frozen models**: with ``grad=True`` an output that does not require grad
  (every parameter frozen) becomes a fresh leaf, so the gradient of the logits reaches it;
* **in-place ops**: with ``grad=True`` the rest of the network gets a clone of the output, so a
  later ``ReLU(inplace=True)`` or timm's ``x += shortcut`` cannot overwrite the recorded tensor;
* **early stop**: with ``stop=True`` the forward pass ends as soon as every captured layer ran
  (:meth:`Capture.forward` swallows the stop), so input-only passes skip the rest of the model;
* **copies**: detached records are copies, so later in-place ops cannot change them, and can be
  cast and moved on the fly (``to=``);
* **removal**: hooks are registered transactionally and removed in ``finally``, also when the
  model raises.

Examples
--------
>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
>>> with capture(m, ["0"], grad=True) as cap:
...     y = m(torch.randn(5, 3))
...     g, = torch.autograd.grad(y.sum(), cap.output("0"))
>>> g.shape, len(m[0]._forward_hooks)
(torch.Size([5, 4]), 0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UnknownLayerError, UnsupportedLayerError
from .layers import resolve_layer

__all__ = ["Capture", "capture", "differentiable"]

InputFn = Callable[[nn.Module, Tensor, Tensor], Any]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once every captured layer has run."""


def differentiable(output: Tensor) -> tuple[Tensor, Tensor]:
    """Split a layer output into the tensor to differentiate and the one to pass on.

    Returns
    -------
    (source, downstream)
        ``source`` is the output itself, or a fresh leaf if it has no graph (frozen model);
        ``downstream`` is a clone of it, so later in-place operations cannot modify ``source``.

    Examples
    --------
    >>> src, down = differentiable(torch.ones(2))
    >>> src.requires_grad, down is src
    (True, False)
    """
    source = output if output.requires_grad else output.detach().requires_grad_(True)
    return source, source.clone()


def _copy(tensor: Tensor, to: Mapping[str, Any]) -> Tensor:
    # a detached view would share memory with a tensor that later in-place ops (ReLU(inplace),
    # x += y) still change: records are copies
    return tensor.detach().to(**to, copy=True)


class Capture:
    """What the hooks of one :func:`capture` context recorded since the last :meth:`clear`.

    Attributes
    ----------
    names : tuple of str
        The captured layers, in the order given.
    """

    def __init__(self, names: Sequence[str], stop: bool) -> None:
        self.names = tuple(names)
        self._stop = stop
        self._calls: dict[str, int] = dict.fromkeys(self.names, 0)
        self._outputs: dict[str, list[Tensor]] = {n: [] for n in self.names}
        self._inputs: dict[str, list[Any]] = {n: [] for n in self.names}

    def clear(self) -> None:
        """Forget everything recorded (call before each forward pass)."""
        for name in self.names:
            self._calls[name] = 0
            self._outputs[name].clear()
            self._inputs[name].clear()

    def calls(self, name: str) -> int:
        """How often layer ``name`` ran since the last :meth:`clear`."""
        return self._calls[name]

    def _once(self, name: str) -> None:
        calls = self._calls.get(name)
        if calls is None:
            raise UnknownLayerError(f"layer {name!r} is not captured; captured: {list(self.names)}")
        if calls != 1:
            raise UnsupportedLayerError(
                f"layer {name!r} ran {calls} times in one forward pass; neuronsplit needs layers "
                "that run exactly once per pass (a module reused in several places cannot be "
                "attributed per use)"
                + ("" if calls else "; it did not run at all: does the model use it?")
            )

    def output(self, name: str) -> Tensor:
        """The output of ``name`` in the last pass (it must have run exactly once)."""
        self._once(name)
        return self._outputs[name][0]

    def input(self, name: str) -> Any:
        """The input of ``name`` (or what ``input_fn`` made of it) in the last pass."""
        self._once(name)
        return self._inputs[name][0]

    def outputs(self, name: str) -> list[Tensor]:
        """The outputs of every call of ``name`` since the last :meth:`clear`, in call order."""
        return list(self._outputs[name])

    def forward(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Call ``model``; with ``stop=True`` return ``None`` once the captured layers ran."""
        try:
            return model(*args, **kwargs)
        except _StopForward:
            return None

    def _hook(
        self,
        name: str,
        *,
        outputs: bool,
        grad: bool,
        input_fn: InputFn | None,
        keep_input: bool,
        to: Mapping[str, Any],
    ) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if not isinstance(output, Tensor):
                raise UnsupportedLayerError(
                    f"layer {name!r} returned {type(output).__name__}, not a Tensor"
                )
            self._calls[name] += 1
            returned = None
            if input_fn is not None or keep_input:
                x = args[0] if args else None
                if input_fn is not None:
                    with torch.no_grad():
                        self._inputs[name].append(input_fn(module, x.detach(), output.detach()))
                else:
                    self._inputs[name].append(_copy(x, to))
            if outputs:
                if grad:
                    source, returned = differentiable(output)
                    self._outputs[name].append(source)
                else:
                    self._outputs[name].append(_copy(output, to))
            if self._stop and all(self._calls.values()):
                raise _StopForward
            return returned

        return hook


@contextlib.contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[str] | Mapping[str, nn.Module],
    *,
    outputs: bool = True,
    inputs: bool = False,
    input_fn: InputFn | None = None,
    grad: bool = False,
    stop: bool = False,
    to: Mapping[str, Any] | None = None,
) -> Iterator[Capture]:
    """Hook ``layers`` of ``model`` for their outputs and/or inputs while the context is open.

    Parameters
    ----------
    model : nn.Module
        The model whose layers are hooked (names are resolved on it).
    layers : sequence of str, or mapping of name to module
        Dotted layer names, or the modules themselves keyed by the names used to read them.
    outputs : bool, default True
        Record each layer's output.
    inputs : bool, default False
        Record a copy of each layer's (first positional) input, detached.
    input_fn : callable, optional
        ``input_fn(module, input, output)`` is run under ``no_grad`` in the hook and its result
        recorded instead of the input (e.g. per-tap sums), so the input itself is not kept.
    grad : bool, default False
        Record outputs as differentiable tensors (graph start for frozen models, clone for the
        rest of the network); otherwise outputs are recorded as detached copies.
    stop : bool, default False
        End the forward pass once every layer ran; call the model through
        :meth:`Capture.forward`, which then returns ``None``.
    to : mapping, optional
        ``Tensor.to`` keyword arguments (``dtype``, ``device``) applied to detached records.

    Yields
    ------
    Capture
        Call :meth:`Capture.clear` before each pass; read with :meth:`Capture.output` and
        :meth:`Capture.input`.

    Raises
    ------
    UnknownLayerError
        For a layer name the model does not contain.
    """
    modules = (
        dict(layers)
        if isinstance(layers, Mapping)
        else {name: resolve_layer(model, name) for name in layers}
    )
    cap = Capture(list(modules), stop)
    handles: list[Any] = []
    try:
        for name, module in modules.items():
            hook = cap._hook(
                name, outputs=outputs, grad=grad, input_fn=input_fn, keep_input=inputs,
                to=dict(to or {}),
            )  # fmt: skip
            handles.append(module.register_forward_hook(hook))
        yield cap
    finally:
        for handle in handles:
            handle.remove()
