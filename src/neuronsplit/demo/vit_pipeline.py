"""The unsupervised half of the demo: ELUDe's :func:`~neuronsplit.methods.elude.discover` on the
demo ViT's MLP layers, and side by side with Hesse's labelled split on the demo CNN.

:func:`run_vit_demo` discovers concepts in every ``blocks.{i}.mlp.fc1`` / ``fc2`` of the demo ViT
from the *training* digits (no labels), splits them, checks the split model against the original
on the test digits, and judges the split with labels on the *test* digits only: the top-20 label
purity of each split unit against that of its subunits
(:func:`~neuronsplit.evaluation.top_k_purity`), with a random control. :func:`cnn_vs_discover`
runs ``discover`` on the CNN units Hesse's plan split and scores both plans the same way.
``neuronsplit demo`` runs both and writes them into ``summary.json`` (``"vit"`` and
``"cnn_vs_discover"``; schema in the README).
"""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_bool, check_int, check_number
from ..evaluation import PurityReport, top_k_purity
from ..methods.elude import DEFAULT_TOP_N, discover
from ..nn import apply_plan, verify_equivalence
from ..plan import SplitPlan
from ._background import Beside, beside
from ._threads import demo_threads
from .data import digits_loader, load_digits

__all__ = [
    "run_vit_demo", "start_vit_demo", "VitDemoRun", "cnn_vs_discover", "vit_demo_layers",
    "vit_in_background", "TARGET",
]  # fmt: skip

#: the issue's target for the demo ViT: mean top-20 purity gain and share of units split
TARGET: dict[str, float] = {"purity_gain": 0.10, "split_fraction": 0.333}
_PURITY_K = 20
#: the demo ViT as the summary and the report name it
VIT_MODEL_NAME = "DigitsViT (timm VisionTransformer, 4 blocks, width 64, scikit-learn digits)"


def vit_demo_layers(depth: int = 4) -> list[str]:
    """The MLP layers of the demo ViT, ``blocks.{i}.mlp.fc1`` and ``fc2`` for every block.

    Examples
    --------
    >>> vit_demo_layers(2)
    ['blocks.0.mlp.fc1', 'blocks.0.mlp.fc2', 'blocks.1.mlp.fc1', 'blocks.1.mlp.fc2']
    """
    return [f"blocks.{i}.mlp.{fc}" for i in range(depth) for fc in ("fc1", "fc2")]


def vit_in_background(
    cache_dir: str | os.PathLike | None = None, *, enabled: bool = True, progress: bool = False
) -> AbstractContextManager[None]:
    """:func:`~neuronsplit.demo.vit.demo_vit_in_background` if ``enabled`` (imports timm), else
    a block that does nothing.

    Examples
    --------
    >>> with vit_in_background(enabled=False):
    ...     pass
    """
    check_bool(enabled, "enabled")
    if not enabled:
        return contextlib.nullcontext()
    from .vit import demo_vit_in_background  # needs timm

    return demo_vit_in_background(cache_dir, progress=progress)


def _purity_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The means of :meth:`PurityReport.to_dict` over some of a report's ``per_unit`` rows."""
    if not rows:
        return {"units": 0}

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    out = {"units": len(rows)}
    for what in ("purity", "entropy"):
        for who in ("unit", "subunit", "random"):
            out[f"{who}_{what}"] = mean(f"{who}_{what}")
    out["purity_gain"] = out["subunit_purity"] - out["unit_purity"]
    out["random_gain"] = out["random_purity"] - out["unit_purity"]
    out["entropy_change"] = out["subunit_entropy"] - out["unit_entropy"]
    return out


def _split_figures(layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Units examined and split, split fraction, mean K and the K histogram of some layers."""
    examined = sum(v["examined"] for v in layers.values())
    split = sum(v["split"] for v in layers.values())
    hist: dict[str, int] = {}
    for v in layers.values():
        for k, n in v["k_histogram"].items():
            hist[k] = hist.get(k, 0) + n
    ks = sum(int(k) * n for k, n in hist.items())
    return {
        "examined": examined,
        "split": split,
        "split_fraction": split / examined if examined else 0.0,
        "mean_k": ks / split if split else 1.0,
        "k_histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
    }


def _equivalence(model: nn.Module, split: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """``verify_equivalence`` in float32 and float64 (it computes the subunit rows), with the
    worst split unit per layer instead of every split unit's figures (hundreds of units)."""
    report = verify_equivalence(model, split, images)
    rows = []
    for r in report.rows:
        layers = []
        for lay in r.layers:
            worst = lay.worst_split
            layers.append({
                "layer": lay.layer, "passed": lay.passed, "max_ref": lay.max_ref,
                "unsplit_max_abs": lay.unsplit_max_abs, "split_units": len(lay.split_units),
                "split_max_abs": worst.max_abs if worst is not None else 0.0,
                "split_worst_unit": worst.unit if worst is not None else None,
            })  # fmt: skip
        rows.append({
            "dtype": r.dtype, "passed": r.passed, "output_max_abs": r.output_max_abs,
            "output_max_ref": r.output_max_ref, "atol": r.atol, "rtol": r.rtol, "layers": layers,
        })  # fmt: skip
    return {
        "passed": bool(report.passed),
        "max_abs_delta_logit": {r.dtype: r.output_max_abs for r in report.rows},
        "rows": rows,
    }


def run_vit_demo(
    out: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_concepts: int = 4,
    top_n: int = DEFAULT_TOP_N,
    min_silhouette: float = 0.4,
    k: int = _PURITY_K,
    progress: bool = True,
) -> dict[str, Any]:
    """ELUDe on the demo ViT: discover, split, verify and judge every MLP layer.

    ``discover`` reads the 1400 training digits (no labels); the split is checked with
    ``verify_equivalence`` and judged by :func:`~neuronsplit.evaluation.top_k_purity` on the
    397 test digits only, the only place labels are read.

    Parameters
    ----------
    out : path-like, optional
        Directory (created) that receives the plan as ``plan_vit.json``; none: nothing written.
    cache_dir : path-like, optional
        Where the trained demo ViT is cached (:func:`~neuronsplit.demo.get_demo_vit`).
    max_concepts, top_n, min_silhouette : int, int, float
        Passed to :func:`~neuronsplit.methods.elude.discover`.
    k : int, default 20
        Images per top set of the purity evaluation.
    progress : bool
        Show progress bars (training the ViT if the cache lacks it, discover).

    Returns
    -------
    dict
        JSON-compatible: ``layers`` (the ELUDe meta per layer plus its purity), ``split``
        (examined, split, split_fraction, mean_k, k_histogram), ``purity`` (all MLP layers,
        random control included), ``by_type`` (``fc1`` / ``fc2``), ``equivalence``,
        ``target`` and ``met``.
    """
    return start_vit_demo(
        out, cache_dir=cache_dir, max_concepts=max_concepts, top_n=top_n,
        min_silhouette=min_silhouette, k=k, progress=progress,
    ).summary()  # fmt: skip


@dataclass
class VitDemoRun:
    """The demo ViT after ``discover`` (:func:`start_vit_demo`): the model, its plan and split
    model, and the checks (equivalence and purity), which may still be running beside.

    Examples
    --------
    >>> run = start_vit_demo(None, progress=False)  # doctest: +SKIP
    >>> run.plan.num_units, run.summary()["met"]  # doctest: +SKIP
    (359, True)
    """

    model: nn.Module
    plan: SplitPlan
    split: nn.Module
    checks: Beside[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """Wait for the checks and return :func:`run_vit_demo`'s summary."""
        return self.checks.result()

    def cancel(self) -> None:
        """Stop the checks if they still run (the caller failed and will not ask)."""
        self.checks.cancel()


def start_vit_demo(
    out: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
    max_concepts: int = 4, top_n: int = DEFAULT_TOP_N, min_silhouette: float = 0.4,
    k: int = _PURITY_K, progress: bool = True, checks_beside: bool = False,
) -> VitDemoRun:  # fmt: skip
    """:func:`run_vit_demo` up to the plan (written to ``out``); the checks follow.

    With ``checks_beside`` the equivalence check and the purity evaluation (about a third of
    the ViT's time after training) run in a forked process
    (:func:`~neuronsplit.demo._background.beside`) while the caller goes on, e.g. to build
    the report of the same split (``neuronsplit demo`` does); :meth:`VitDemoRun.summary`
    waits for them. The figures are the same either way. Where the platform cannot fork they
    run before this returns (in a thread they would meet the caller's use of the same model).

    Parameters
    ----------
    out, cache_dir, max_concepts, top_n, min_silhouette, k, progress
        As :func:`run_vit_demo`.
    checks_beside : bool, default False
        Run the checks in the background instead of before returning.

    Returns
    -------
    VitDemoRun

    Examples
    --------
    >>> run = start_vit_demo("demo_out", checks_beside=True)  # doctest: +SKIP
    >>> part = ns.report_part(run.model, run.plan, loader, split=run.split)  # doctest: +SKIP
    >>> summary = run.summary()  # doctest: +SKIP
    """
    check_int(max_concepts, "max_concepts", low=2)
    check_int(top_n, "top_n", low=2)
    check_number(min_silhouette, "min_silhouette", low=-1, high=1)
    check_int(k, "k", low=1)
    check_bool(progress, "progress")
    check_bool(checks_beside, "checks_beside")
    from .vit import get_demo_vit  # needs timm

    with demo_threads():  # one thread, as run_demo (see its notes)
        vit = get_demo_vit(cache_dir, progress=progress)
        names = vit_demo_layers(len(vit.blocks))
        plan = discover(
            vit, digits_loader("train", batch_size=256), names, max_concepts=max_concepts,
            top_n=top_n, min_silhouette=min_silhouette, progress=progress,
        )  # fmt: skip
        split = apply_plan(vit, plan)
    plan_file = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plan.to_json(out / "plan_vit.json")
        plan_file = "plan_vit.json"
    params = {
        "layers": names, "max_concepts": max_concepts, "top_n": top_n,
        "min_silhouette": min_silhouette, "tokens": "all", "samples": "token",
        "discover_data": "training digits (1400, no labels)",
        "evaluation_data": "test digits (397, labels)", "k": k,
    }  # fmt: skip

    def checks() -> dict[str, Any]:
        with demo_threads():
            return _checks(vit, split, plan, names, k, params, plan_file)

    return VitDemoRun(vit, plan, split, beside(checks, fork=checks_beside))


def _checks(
    vit: nn.Module, split: nn.Module, plan: SplitPlan, names: list[str], k: int,
    params: dict[str, Any], plan_file: str | None,
) -> dict[str, Any]:  # fmt: skip
    """:func:`run_vit_demo`'s summary: accuracy, equivalence, purity per layer and type,
    target (``params`` and ``plan_file`` are recorded as given)."""
    test = load_digits("test")
    with torch.no_grad():
        accuracy = float((vit(test.images).argmax(1) == test.labels).float().mean())
    equivalence = _equivalence(vit, split, test.images)
    # a plan that splits nothing (possible with other settings) has nothing to score
    loader = digits_loader("test", batch_size=256)
    report = top_k_purity(vit, plan, loader, k=k) if len(plan) else None
    per_unit = report.per_unit if report is not None else []
    meta = plan.meta.to_dict()["elude"]["layers"]
    layers = {
        name: {**meta[name], "purity": _purity_of([r for r in per_unit if r["layer"] == name])}
        for name in names
    }  # fmt: skip
    by_type = {}
    for fc in ("fc1", "fc2"):
        of_type = [n for n in names if n.endswith(f".{fc}")]
        rows = [r for r in per_unit if r["layer"] in of_type]
        by_type[fc] = {**_split_figures({n: meta[n] for n in of_type}), "purity": _purity_of(rows)}
    figures = _split_figures(meta)
    return {
        "model": VIT_MODEL_NAME,
        "test_accuracy": accuracy,
        "params": params,
        "layers": layers,
        "split": figures,
        "purity": report.to_dict() if report is not None else {"units": 0, "k": k},
        "by_type": by_type,
        "equivalence": equivalence,
        "target": dict(TARGET),
        "met": bool(
            report is not None
            and report.purity_gain >= TARGET["purity_gain"]
            and figures["split_fraction"] >= TARGET["split_fraction"]
        ),
        "plan_file": plan_file,
    }


def _unit_rows(report: PurityReport | None) -> dict[int, dict[str, Any]]:
    return {r["unit"]: r for r in report.per_unit} if report is not None else {}


def cnn_vs_discover(
    model: nn.Module, hesse: SplitPlan, layer: str, *, k: int = _PURITY_K, progress: bool = False
) -> dict[str, Any]:
    """Discover on the units Hesse's plan split, and score both plans on the test digits.

    ``discover`` sees the same training digits as Hesse's scan, without their labels, and is
    restricted to the units Hesse's plan split (``units=[...]``); it may leave some of them
    alone (``K = 1``). Both plans are scored by :func:`~neuronsplit.evaluation.top_k_purity`
    (Hesse's overlap form and discover's disjoint form alike).

    Returns
    -------
    dict
        ``units`` (per unit: ``k`` and ``purity_gain`` of each plan, ``None`` for a unit a plan
        left alone, and the unit's own ``unit_purity``), ``hesse`` / ``discover`` (the
        :meth:`PurityReport.to_dict` of each plan, ``None`` if it split nothing) and
        ``discover_meta`` (the ELUDe summary of the layer).
    """
    units = sorted(s.unit for s in hesse.splits if s.layer == layer)
    found = discover(
        model, digits_loader("train", batch_size=256), [layer], units=units, progress=progress
    )
    loader = digits_loader("test", batch_size=256)
    reports = {
        "hesse": top_k_purity(model, hesse, loader, k=k),
        "discover": top_k_purity(model, found, loader, k=k) if len(found) else None,
    }
    per = {name: _unit_rows(rep) for name, rep in reports.items()}
    rows = []
    for u in units:
        row: dict[str, Any] = {"layer": layer, "unit": u}
        for name in ("hesse", "discover"):
            r = per[name].get(u)
            if r is None:  # left alone
                row[name] = {"k": 1, "subunit_purity": None, "purity_gain": None}
                continue
            row["unit_purity"] = r["unit_purity"]
            gain = r["subunit_purity"] - r["unit_purity"]
            row[name] = {"k": r["k"], "subunit_purity": r["subunit_purity"], "purity_gain": gain}
        rows.append(row)
    return {
        "layer": layer,
        "k": k,
        "units": rows,
        **{name: rep.to_dict() if rep is not None else None for name, rep in reports.items()},
        "discover_meta": found.meta.to_dict()["elude"]["layers"][layer],
    }
