"""Zennit LRP on split layers, part 2: the composite's rule, paired across rows and merge.

The rule a composite gives a split layer's ``.subunits`` (z+, gamma, alpha-beta, epsilon, box)
would normalise each row by the row's own sum, and gamma's sign tests would read the row's sign
instead of the unit's; a ``Norm`` rule on the merge shares ``R_u`` by signed activations, which
is not what z+/gamma/alpha-beta do either. :class:`SplitRule` replaces both by a pair of linear
maps fixed by the forward pass. With ``phi_i`` the rule's own normalised gradient of the *unit*
for modifier ``i`` (its ``gradient_mapper`` applied to the unit's modified outputs, the sums of
the rows' modified outputs) and ``psi_row`` the share of the unit's relevance that flows through
a row (the rule's reducer applied to the row's modified outputs and ``phi``: exactly the
relevance the rule gives the inputs of the row's group, which are disjoint),

* the merge sends ``R_row = psi_row * R_u`` to the rows; a residual row takes
  ``1 - sum of the other rows' psi``, i.e. its shared inputs plus what the bias and the
  stabiliser absorb, so the rows of a unit add up to ``R_u`` exactly;
* ``.subunits`` sends a row relevance ``G_row`` to the inputs with the rule's gradient
  ``G_row / psi_row * phi_u``: for ``G = R_row`` that is the rule applied to the original
  weight (the rows' weights add up to it, entry by entry), so the input relevance equals the
  unsplit layer's; a masked ``G`` (Disentangle) gives one row's group alone.

This needs a rule whose parameter modifiers keep zero weights zero, whose output modifiers are
identities, whose gradient mapper is linear in the incoming relevance and whose reducer is a
weighted sum of ``input * gradient`` products: every Zennit rule for conv/linear layers but
``Flat`` and ``WSquare`` (checked by :func:`split_rule_supported`). With other rules the
composite's rule stays on ``.subunits`` and the backend gives the merge Zennit's ``Norm`` rule.
A row whose ``psi`` is exactly zero passes nothing to its inputs, which loses relevance only
when the rule's contributions of the row cancel to exactly zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from zennit.core import BasicHook, Hook, ParamMod, RemovableHandleList, zero_wrap

from ..capture import is_split_layer

__all__ = [
    "SplitRule",
    "register_split_rules",
    "split_rule_supported",
    "is_split_layer",
    "RowLayout",
]


class RowLayout:
    """Row layout of a split layer: the unit of every row, and which rows carry a bias."""

    def __init__(self, layer: nn.Module) -> None:
        merge = layer.merge
        c = merge.original_out
        device = merge.index.device
        self.dim = merge.dim
        self.row_unit = torch.cat([torch.arange(c, device=device), merge.index])
        plain = torch.ones(c, dtype=torch.bool, device=device)
        plain[merge.units] = False
        # rows that hold a unit's bias: units that are not split, and the residual rows
        self.bias_rows = torch.cat([plain, merge.sub < 0])


def _along(vector: Tensor, dim: int) -> Tensor:
    """``vector`` shaped to broadcast along the unit axis ``dim`` (counted from the end)."""
    return vector.reshape((-1,) + (1,) * (-dim - 1))


def _as_list(value: Any) -> list[Tensor]:
    return [value] if isinstance(value, Tensor) else list(value)


def split_rule_supported(rule: Any) -> bool:
    """Whether :class:`SplitRule` reproduces ``rule`` (a Zennit ``BasicHook``) exactly.

    Probed on small random tensors: parameter modifiers keep zeros zero (rows hold zeros outside
    their group), output modifiers are identities, the gradient mapper is linear in the incoming
    relevance and the reducer is ``sum_i a_i * inputs[i] * gradients[i]``.

    Examples
    --------
    >>> from zennit.rules import Epsilon, Flat, ZPlus
    >>> [split_rule_supported(r) for r in (Epsilon(), ZPlus(), Flat())]
    [True, True, False]
    """
    if not isinstance(rule, BasicHook):
        return False
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    try:
        zeros = torch.zeros(3, dtype=torch.float64)
        for mod in rule.param_modifiers:
            mod = ParamMod.ensure(mod)
            if mod.param_keys == []:
                continue
            fn = zero_wrap(mod.zero_params or [])(mod.modifier)
            if any(fn(zeros, key).abs().max() != 0 for key in ("weight", "bias")):
                return False
        probe = rand(2, 3)
        if any(not torch.equal(out_mod(probe), probe) for out_mod in rule.output_modifiers):
            return False
        n = len(rule.input_modifiers)
        outs, grad = [rand(2, 3) for _ in range(n)], rand(2, 3)
        mapped = _as_list(rule.gradient_mapper(grad, outs))
        unit = _as_list(rule.gradient_mapper(torch.ones_like(grad), outs))
        if not all(torch.allclose(m, grad * u) for m, u in zip(mapped, unit, strict=True)):
            return False
        xs, gs = [rand(2, 3) for _ in range(n)], [rand(2, 3) for _ in range(n)]
        ones = torch.ones(2, 3, dtype=torch.float64)
        coef = [
            rule.reducer([ones if k == i else 0 * ones for k in range(n)], [ones] * n)
            for i in range(n)
        ]
        expected = sum(a * x * g for a, x, g in zip(coef, xs, gs, strict=True))
        return bool(torch.allclose(rule.reducer(xs, gs), expected))
    except Exception:  # a rule that cannot even run on the probe is not supported
        return False


class SplitRule:
    """The composite's rule for one split layer, as a pair of hooks on ``.subunits`` and ``.merge``.

    Parameters
    ----------
    layer : nn.Module
        The split layer.
    rule : zennit.core.BasicHook
        The rule the composite gave ``.subunits`` (see :func:`split_rule_supported`).

    Notes
    -----
    The definition is in the module docstring. The coefficients ``phi`` and ``psi`` are
    computed once per forward pass (on the first backward pass through the layer) from the
    layer's input, so every backward pass after a forward pass (the masked ones of
    ``Disentangle`` too) uses the same linear maps.
    """

    def __init__(self, layer: nn.Module, rule: BasicHook) -> None:
        self.layer = layer
        self.rule = rule
        self.layout = RowLayout(layer)
        self.input: Tensor | None = None
        self._coefficients: tuple[list[Tensor], Tensor] | None = None
        self.hooks = (_RowsHook(self), _MergeHook(self))

    def register(self) -> RemovableHandleList:
        """Hook ``.subunits`` and ``.merge``; the handles undo both."""
        rows, merge = self.hooks
        return RemovableHandleList(
            [rows.register(self.layer.subunits), merge.register(self.layer.merge)]
        )

    def modified_outputs(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The rule's modified inputs and row outputs of ``.subunits`` (as ``BasicHook``)."""
        inputs, outputs = [], []
        rule, module = self.rule, self.layer.subunits
        mods = zip(rule.input_modifiers, rule.param_modifiers, rule.output_modifiers, strict=True)
        for in_mod, param_mod, out_mod in mods:
            input = in_mod(x).requires_grad_()
            with ParamMod.ensure(param_mod)(module) as modified, torch.autograd.enable_grad():
                output = out_mod(modified.forward(input))
            inputs.append(input)
            outputs.append(output)
        return inputs, outputs

    def coefficients(self, outputs: list[Tensor] | None = None) -> tuple[list[Tensor], Tensor]:
        """``phi`` (per modifier, on the rows) and ``psi`` (per row) of the current forward pass."""
        if self._coefficients is None:
            if outputs is None:
                if self.input is None:
                    raise RuntimeError("SplitRule: no forward pass through the split layer")
                with torch.no_grad():
                    outputs = self.modified_outputs(self.input.detach())[1]
            # half precision: 1 / stabilised sums overflow float16, so compute in float32
            wide = [o.detach() for o in outputs]
            if wide[0].dtype in (torch.float16, torch.bfloat16):
                wide = [o.float() for o in wide]
            self._coefficients = self._compute(wide)
        return self._coefficients

    def _compute(self, outputs: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        merge, layout, dim = self.layer.merge, self.layout, self.layout.dim
        units = [merge.forward(o) for o in outputs]  # the original layer's modified outputs
        phi_units = _as_list(self.rule.gradient_mapper(torch.ones_like(units[0]), units))
        phi = [p.index_select(dim, layout.row_unit) for p in phi_units]
        if merge.steered:  # the merge weighs the rows: z_u = sum_row w_row * row
            weights = _along(torch.cat([merge.row_scale, merge.coef]), dim)
            phi = [p * weights.to(p.dtype) for p in phi]
        bias_rows = _along(layout.bias_rows, dim)
        # share of R_u that the rule passes through a row without a bias: its group's inputs
        share = torch.where(bias_rows, 0, self.rule.reducer(outputs, phi))
        c, e = merge.original_out, merge.num_extra
        total = share.narrow(dim, 0, c).index_add(dim, merge.index, share.narrow(dim, c, e))
        # a bias row takes the rest: 1 for a unit that is not split, 1 - sum of the others
        rest = (1 - total).index_select(dim, layout.row_unit)
        return phi, torch.where(bias_rows, rest, share)

    def clear(self, x: Tensor | None = None) -> None:
        """Forget the coefficients (a new forward pass, with input ``x``)."""
        self.input = x
        self._coefficients = None


class _RowsHook(Hook):
    """On ``.subunits``: row relevance -> input relevance (the rule with the unit's gradient)."""

    def __init__(self, owner: SplitRule) -> None:
        super().__init__()
        self.owner = owner

    def forward(self, module: nn.Module, input: tuple[Tensor, ...], output: Tensor) -> None:
        self.owner.clear(input[0])

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple[Any, ...]:
        owner, grad = self.owner, grad_output[0]
        if owner.input is None:
            raise RuntimeError("SplitRule: no forward pass through the split layer")
        inputs, outputs = owner.modified_outputs(owner.input.clone())
        phi, psi = owner.coefficients(outputs)
        zero = psi == 0
        ratio = torch.where(zero, 0, grad.to(psi.dtype) / torch.where(zero, 1, psi))
        seeds = [(ratio * p).to(o.dtype) for p, o in zip(phi, outputs, strict=True)]
        gradients = torch.autograd.grad(
            outputs, inputs, grad_outputs=seeds, create_graph=grad.requires_grad
        )
        relevance = owner.rule.reducer(inputs, gradients)
        return tuple(relevance if g.shape == relevance.shape else None for g in grad_input)

    def copy(self) -> _RowsHook:
        return self

    def remove(self) -> None:
        super().remove()
        self.owner.clear()


class _MergeHook(Hook):
    """On ``.merge``: unit relevance -> row relevance ``psi_row * R_u``."""

    def __init__(self, owner: SplitRule) -> None:
        super().__init__()
        self.owner = owner

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple[Any, ...]:
        layout = self.owner.layout
        psi, grad = self.owner.coefficients()[1], grad_output[0]
        relevance = psi * grad.index_select(layout.dim, layout.row_unit).to(psi.dtype)
        relevance = relevance.to(grad.dtype)
        return tuple(relevance if g.shape == relevance.shape else None for g in grad_input)

    def copy(self) -> _MergeHook:
        return self


def _rule_on(module: nn.Module, composite: Any) -> Hook | None:
    """The hook ``composite`` registered on ``module`` (None if it has none)."""
    refs = set(composite.hook_refs)
    for fn in module._forward_hooks.values():
        owner = getattr(fn, "__self__", None)
        if owner in refs:
            return owner
    return None


def register_split_rules(model: nn.Module, composite: Any) -> RemovableHandleList:
    """Give every split layer of ``model`` the :class:`SplitRule` of ``composite``'s rule.

    Call after ``composite.register(model)``. For each split layer whose ``.merge`` the
    composite left without a rule and whose ``.subunits`` rule passes
    :func:`split_rule_supported`, the composite's hook on ``.subunits`` is removed and the pair
    registered; its handles join the composite's, so ``composite.remove()`` undoes them too.

    Returns
    -------
    zennit.core.RemovableHandleList
        The pairs' handles (also removed by ``composite.remove()``).
    """
    handles = RemovableHandleList()
    for layer in [m for m in model.modules() if is_split_layer(m)]:
        rule = _rule_on(layer.subunits, composite)
        if _rule_on(layer.merge, composite) is not None or not split_rule_supported(rule):
            continue
        for entry in composite.handles:  # take the composite's rule off .subunits
            first = entry[0] if isinstance(entry, list) and entry else None
            if getattr(first, "instance_ref", lambda: None)() is rule:
                entry.remove()
        composite.hook_refs.discard(rule)
        pair = SplitRule(layer, rule)
        handle = pair.register()
        composite.handles.append(handle)
        for hook in pair.hooks:
            composite.hook_refs.add(hook)
        handles.append(handle)
    return handles
