"""The LRP epsilon rule computed inside the ordinary backward pass: :class:`FastEpsilon`.

Zennit's rules (``BasicHook``) run each layer's forward a second time inside the backward pass,
because a rule may modify the parameters (z+, gamma, alpha-beta). The epsilon rule does not:
``R_in = x * W^T (R_out / stab(z))`` uses the layer's own weights and output. So the division
can happen on the gradient that enters the layer (a pre-hook on the layer's last autograd node)
and the multiplication by the input on the gradient that leaves it (Zennit's input identity),
and autograd's own pass through the layer computes ``W^T (.)`` -- no second forward, no second
backward. For the layers it rules, this halves the cost of LRP. :class:`FastEpsilon` *is* an
``Epsilon`` (same modifiers, mapper and reducer), so code that reads those (the split-layer
rule) treats it as one.

The result is Zennit's ``Epsilon`` up to float rounding, with three differences on purpose:

* ``epsilon`` is raised to the smallest normal number of the output's dtype (6.1e-5 in
  float16), so an output of exactly 0 never gives 0/0;
* an output changed in place by a later operation is recomputed from the input (as Zennit's
  re-run sees it) rather than read changed;
* a layer called more than once in a forward multiplies each call's gradient by that call's
  input (Zennit's rule uses the last call's input for every call), so it is exact there too.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from zennit.core import Identity, Stabilizer
from zennit.rules import Epsilon

from ..errors import InvalidArgumentError

__all__ = ["FastEpsilon"]


class FastEpsilon(Epsilon):
    """Zennit's LRP epsilon rule, computed without re-running the layer.

    Parameters
    ----------
    epsilon : float or callable, default 1e-6
        Stabiliser, as for ``zennit.rules.Epsilon``.
    zero_params : list of str, optional
        Not supported (a zeroed bias changes the forward); raises
        :class:`~neuronsplit.errors.InvalidArgumentError` if given.

    Examples
    --------
    >>> import torch
    >>> from zennit.composites import LayerMapComposite
    >>> from zennit.types import Linear
    >>> torch.manual_seed(0) and None
    >>> fc = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).double()
    >>> x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    >>> def lrp(rule):
    ...     with LayerMapComposite([(Linear, rule)]).context(fc):
    ...         y = fc(x)
    ...         (g,) = torch.autograd.grad(y, x, y * torch.tensor([1.0, 0.0]))
    ...     return g
    >>> torch.allclose(lrp(FastEpsilon(1e-6)), lrp(Epsilon(1e-6)), atol=1e-12)
    True
    """

    def __init__(self, epsilon: Any = 1e-6, zero_params: Any = None) -> None:
        if zero_params:
            raise InvalidArgumentError(
                f"FastEpsilon(zero_params={zero_params!r}): the rule runs the layer's own "
                "backward, so parameters cannot be zeroed; use zennit.rules.Epsilon instead"
            )
        super().__init__(epsilon=epsilon)
        self.epsilon = epsilon
        self.stabilizer = Stabilizer.ensure(epsilon)

    def pre_forward(self, module: nn.Module, input: Any) -> Any:
        """Multiply the gradient that leaves the layer by this call's input.

        As Zennit's ``Hook.pre_forward`` (an identity node in front of the layer, the input
        cloned against in-place operations), but the hook keeps this call's (detached) input
        rather than reading the last stored one, so a layer called twice in one forward gets
        each call's own input.
        """
        inputs = input if isinstance(input, tuple) else (input,)
        if not inputs[0].requires_grad:
            return input
        hook_ref = weakref.ref(self)
        post_input = Identity.apply(*inputs)
        kept = tuple(x.detach() for x in post_input)  # detached: no reference cycle via grad_fn

        def multiply(grad_input: tuple[Any, ...], grad_output: Any) -> tuple[Any, ...] | None:
            hook = hook_ref()
            if hook is None or not hook.active:
                return None
            return tuple(
                None if g is None else x * g for x, g in zip(kept, grad_input, strict=False)
            )

        self.tensor_handles.append(post_input[0].grad_fn.register_hook(multiply))
        post_input = tuple(x.clone() for x in post_input)
        return post_input[0] if len(post_input) == 1 else post_input

    def post_forward(self, module: nn.Module, input: Any, output: Any) -> Any:
        """Divide the gradient that enters the layer by the stabilised output.

        The output is read when the gradient arrives; if a later in-place operation changed it
        (its version counter moved), it is recomputed from this call's input, as Zennit's rule
        would (a re-run of the layer).
        """
        single = not isinstance(output, tuple)
        out = output if single else output[0]
        if out.grad_fn is not None:
            hook_ref = weakref.ref(self)
            z, version = out.detach(), out._version
            inputs = tuple(x.detach() for x in input)

            def divide(grad_outputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
                hook = hook_ref()
                if hook is None or not hook.active or grad_outputs[0] is None:
                    return None
                current = z if z._version == version else hook.recompute(module, inputs)
                return (grad_outputs[0] / hook.denominator(current), *grad_outputs[1:])

            self.tensor_handles.append(out.grad_fn.register_prehook(divide))
        return output

    def recompute(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
        """The layer's output from its input, without hooks or graph (after an in-place edit)."""
        with torch.no_grad():
            out = module.forward(*inputs)
        return out if isinstance(out, Tensor) else out[0]

    def denominator(self, z: Tensor) -> Tensor:
        """``z + eps * sign(z)`` (sign 0 -> +1), Zennit's stabiliser, in one elementwise op.

        ``eps`` is raised to the smallest normal number of ``z``'s dtype (1e-9 is 0 in float16,
        and an output of exactly 0 would give 0/0). A stabiliser that clips or scales by a
        norm is called as Zennit defines it.
        """
        stab = self.stabilizer
        if isinstance(stab, Stabilizer) and not stab.clip and not stab.norm_scale:
            eps = max(float(stab.epsilon), float(torch.finfo(z.dtype).tiny))
            return torch.where(z >= 0, z + eps, z - eps)
        return stab(z)

    def forward(self, module: nn.Module, input: Any, output: Any) -> None:
        """Nothing to store: the backward hooks hold their own call's tensors."""

    def copy(self) -> FastEpsilon:
        """A fresh hook with the same epsilon (one hook instance per module)."""
        return FastEpsilon(self.epsilon)
