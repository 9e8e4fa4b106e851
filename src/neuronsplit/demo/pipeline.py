"""The end-to-end demo: train, scan, detect, split, verify and evaluate on the digits model.

``neuronsplit demo --out DIR`` runs :func:`run_demo` and writes ``DIR/summary.json`` (schema in the
README). Everything is embedded: scikit-learn's digits, a model trained in a few seconds (cached).
Besides Hesse et al.'s labelled split of the CNN it runs the unsupervised half
(:mod:`neuronsplit.demo.vit_pipeline`): ELUDe's ``discover`` on the demo ViT's MLP layers
(``summary["vit"]``) and on the CNN units Hesse split (``summary["cnn_vs_discover"]``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .._checks import check_bool, check_int, check_number
from ..errors import EmptyClassError
from ..evaluation import concept_fractions, evaluate
from ..methods.hesse import PolysemanticUnit, find_polysemantic, plan_split
from ..nn import apply_plan, explicit_rows, verify_equivalence
from ..plan import SplitPlan
from ..stats import ScanResult, scan
from ._background import beside
from ._threads import demo_threads
from .data import digits_loader, load_digits
from .model import DEMO_LAYER, get_demo_model
from .vit_pipeline import (
    VIT_MODEL_NAME,
    VitDemoRun,
    cnn_vs_discover,
    start_vit_demo,
    vit_in_background,
)

__all__ = ["run_demo", "format_table", "demo_plan"]


def demo_plan(
    model: torch.nn.Module,
    *,
    top: int = 3,
    tau: float = 0.03,
    p: float = 0.75,
    gamma: float = 0.5,
    progress: bool = False,
) -> tuple[ScanResult, list[PolysemanticUnit], SplitPlan]:
    """Scan the demo model, find its polysemantic ``fc2`` units and plan the top ``top`` splits.

    Returns
    -------
    (ScanResult, list of PolysemanticUnit, SplitPlan)
    """
    train_loader = digits_loader("train", batch_size=256)
    result = scan(model, train_loader, [DEMO_LAYER], num_classes=10, progress=progress)
    units = find_polysemantic(result, DEMO_LAYER, tau=tau, p=p, gamma=gamma)
    if not units:
        raise EmptyClassError(
            "the demo model has no gamma-polysemantic fc2 unit at these parameters; lower "
            "gamma's strictness (raise gamma) or retrain it (get_demo_model(retrain=True))"
        )
    plan = plan_split(
        units[:top], result, train_loader, model=model, gamma=gamma, progress=progress
    )
    return result, units, plan


def run_demo(
    out: str | os.PathLike = "demo_out",
    *,
    cache_dir: str | os.PathLike | None = None,
    top: int = 3,
    tau: float = 0.03,
    p: float = 0.75,
    gamma: float = 0.5,
    progress: bool = True,
    unsupervised: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline on the embedded digits models and write ``summary.json``.

    Parameters
    ----------
    out : path-like
        Output directory (created).
    cache_dir : path-like, optional
        Where the trained demo model is cached.
    top : int
        How many of the most polysemantic units to split.
    tau, p, gamma : float
        Detection parameters (Hesse et al.'s defaults).
    progress : bool
        Show progress bars (training a model the cache lacks, scans, discover).
    unsupervised : bool, default True
        Also run ELUDe's ``discover``: on the demo ViT (:func:`~.vit_pipeline.run_vit_demo`,
        ``summary["vit"]``, ``DIR/plan_vit.json``) and on the CNN units Hesse's plan split
        (:func:`~.vit_pipeline.cnn_vs_discover`, ``summary["cnn_vs_discover"]``).
    report : bool, default True
        Also write ``DIR/report.html`` (:func:`neuronsplit.report`: both splits, the first
        units of each, on the test digits); ``summary["report"]`` gives its file and seconds.

    Returns
    -------
    dict
        The summary that was written.

    Notes
    -----
    Runs on one torch thread and one BLAS/OpenMP thread (the caller's settings are restored
    afterwards): the demo models are too small to gain from more, and on a machine whose
    cores are busy with other work more threads made the demo several times slower
    (``benchmarks/demo_time.py`` measures it). It also makes the printed figures independent
    of the machine's core count.
    """
    check_int(top, "top (units to split)", low=1)
    check_bool(unsupervised, "unsupervised")
    check_number(tau, "tau", low=0.0, high=1.0, low_open=True)
    check_number(p, "p", low=0.0, high=1.0, low_open=True)
    check_number(gamma, "gamma", low=-1.0, high=1.0)
    check_bool(progress, "progress")
    check_bool(report, "report")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the ViT trains (if the cache lacks it) while the CNN half runs, and its report part too
    with demo_threads(), vit_in_background(cache_dir, enabled=unsupervised, progress=progress):
        summary = _run_demo(out, cache_dir, top, tau, p, gamma, progress, unsupervised)
        report_parts = _ReportParts(out, cache_dir, progress) if report else None
        if report_parts is not None:
            report_parts.add_cnn(summary)
        if unsupervised:
            # the ViT's checks (equivalence, purity) run in a forked process while its report
            # part is built here: both only read the model and the plan
            vit = start_vit_demo(out, cache_dir=cache_dir, progress=progress,
                                 checks_beside=report_parts is not None)  # fmt: skip
            try:
                if report_parts is not None:
                    report_parts.add_vit(vit)
            except BaseException:
                vit.cancel()  # the checks would go on for nobody
                raise
            summary["vit"] = vit.summary()
        if report_parts is not None:
            summary["report"] = report_parts.write()
    summary["seconds"] = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "plan.json").write_text(json.dumps(summary["plan"]))  # plan.to_json()
    return summary


class _ReportParts:
    """``DIR/report.html``, built part by part: the CNN's Hesse split (while the ViT may still
    be training in the background) and the ViT's discovered one, 3 units each."""

    def __init__(self, out: Path, cache_dir: str | os.PathLike | None, progress: bool) -> None:
        self.out, self.cache_dir, self.parts, self.seconds = out, cache_dir, [], 0.0
        self.loader = digits_loader("test", batch_size=256)
        self.common = {"max_units": 3, "k": 8, "feature_steps": 128, "progress": progress,
                       "data": f"the {len(self.loader.dataset)} test digits"}  # fmt: skip

    def _add(self, model: torch.nn.Module, plan: SplitPlan, **options: Any) -> None:
        from ..reporting import report_part

        start = time.perf_counter()
        self.parts.append(report_part(model, plan, self.loader, **options, **self.common))
        self.seconds += time.perf_counter() - start

    def add_cnn(self, summary: dict[str, Any]) -> None:
        model = get_demo_model(self.cache_dir, progress=False)
        self._add(model, SplitPlan.from_dict(summary["plan"]), prefix="cnn",
                  title="CNN: Hesse et al.'s labelled split", model_name=summary["model"])  # fmt: skip

    def add_vit(self, vit: VitDemoRun) -> None:
        # the evaluation (a pass with gradients over the test digits, and the equivalence
        # check on its first batch) runs in a forked process while the reference images and
        # feature visualisations are made here; report_part waits for it last
        evaluation = beside(lambda: evaluate(vit.model, vit.split, self.loader, vit.plan,
                                             k=self.common["k"], progress=False))  # fmt: skip
        try:
            self._add(vit.model, vit.plan, split=vit.split, prefix="vit",
                      title="ViT: ELUDe's discover (no labels)", model_name=VIT_MODEL_NAME,
                      evaluation=evaluation.result)  # fmt: skip
        finally:  # a failure, or a plan that splits nothing (no evaluation asked for)
            evaluation.cancel()

    def write(self) -> dict[str, Any]:
        """Write the file; its ``seconds`` are the parts' (the ViT's includes the wait for its
        evaluation, which runs beside it) and the writing's, not the waits between parts."""
        from ..reporting import write_report

        start = time.perf_counter()
        write_report(self.out / "report.html", self.parts, title="neuronsplit demo report")
        return {"file": "report.html", "seconds": self.seconds + time.perf_counter() - start}


def _run_demo(
    out: Path, cache_dir: str | os.PathLike | None, top: int, tau: float, p: float,
    gamma: float, progress: bool, unsupervised: bool,
) -> dict[str, Any]:  # fmt: skip
    model = get_demo_model(cache_dir, progress=progress)
    test = load_digits("test")
    with torch.no_grad():
        accuracy = float((model(test.images).argmax(1) == test.labels).float().mean())
    result, units, plan = demo_plan(model, top=top, tau=tau, p=p, gamma=gamma, progress=progress)
    split = apply_plan(model, plan)
    report = verify_equivalence(model, split, test.images)
    with torch.no_grad(), explicit_rows(split):  # the subunit rows, not the rebuilt original
        delta = float((model(test.images) - split(test.images)).abs().max())
    no_positive = result.no_positive_relevance(DEMO_LAYER)
    by_unit = {(info["layer"], info["unit"]): info for info in plan.meta["units"]}
    splits_by_unit = {(s.layer, s.unit): s for s in plan.splits}
    rows = []
    for u in units:
        row: dict[str, Any] = {
            "layer": u.layer,
            "unit": u.unit,
            "relevant_classes": list(u.relevant),
            "pairs": [
                {"class_a": q.class_a, "class_b": q.class_b, "cosine": q.cosine} for q in u.pairs
            ],
            "split": False,
        }
        info = by_unit.get((u.layer, u.unit))
        if info is not None:
            fractions = concept_fractions(
                model, split, u.layer, u.unit, test.images, test.labels, info["concepts"], tau=tau
            )
            row.update(
                split=True,
                concepts=info["concepts"],
                rho=info["rho"],
                merge=splits_by_unit[(u.layer, u.unit)].merge,
                fractions=[f.to_dict() for f in fractions],
            )
        rows.append(row)
    summary: dict[str, Any] = {
        "neuronsplit_version": __version__,
        "model": "DigitsNet (scikit-learn digits, 8x8)",
        "layer": DEMO_LAYER,
        "test_accuracy": accuracy,
        "params": {"tau": tau, "p": p, "gamma": gamma, "relevance": result.relevance, "top": top},
        "scan": {
            "images": result.num_samples,
            "classes": result.num_classes,
            # important for no unit (see docs/design.md, "Images without positive relevance")
            "no_positive_relevance": int(no_positive.sum()),
            "no_positive_by_class": no_positive.tolist(),
        },
        "test_images": len(test),
        "units": rows,
        "equivalence": {
            "max_abs_delta_logit": delta,
            "passed": bool(report.passed),
            "report": report.to_dict(),
        },
        "plan": json.loads(plan.to_json()),
    }
    if unsupervised:  # the ViT half follows in run_demo, after the CNN's report part
        summary["cnn_vs_discover"] = cnn_vs_discover(model, plan, DEMO_LAYER, progress=progress)
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Human-readable table of the demo summary."""
    lines = [
        f"DigitsNet layer {summary['layer']}: test accuracy {summary['test_accuracy']:.3f}, "
        f"{len(summary['units'])} gamma-polysemantic units "
        f"(tau={summary['params']['tau']}, p={summary['params']['p']}, gamma={summary['params']['gamma']})",
        f"scan: {summary['scan']['images']} training images, "
        f"{summary['scan'].get('no_positive_relevance', 0)} of them with no positive relevance "
        f"at {summary['layer']} (important for no unit)",
        "",
        f"{'unit':>4}  {'class pair':>10}  {'cosine':>7}  {'split into concepts':<24} {'rho':>5}  fractions d_k/orig per concept (r/orig)",
    ]
    for row in summary["units"]:
        for i, pair in enumerate(row["pairs"]):
            head = f"{row['unit']:>4}" if i == 0 else " " * 4
            extra = ""
            if i == 0 and row["split"]:
                concepts = " | ".join("+".join(map(str, c)) for c in row["concepts"])
                parts = []
                for f in row["fractions"]:
                    sub = "/".join(f"{v:.2f}" for v in f["subunit_mean"])
                    parts.append(
                        f"[{'+'.join(map(str, f['classes']))}: {sub} ({f['residual_mean']:.2f}), n={f['n_images']}]"
                    )
                extra = f"{concepts:<24} {row['rho']:>5.2f}  " + " ".join(parts)
            lines.append(
                f"{head}  {pair['class_a']:>4}-{pair['class_b']:<5}  {pair['cosine']:>7.3f}  {extra}"
            )
    eq = summary["equivalence"]
    lines += [
        "",
        f"split model vs original on the {summary['test_images']} test images: "
        f"max |delta logit| = {eq['max_abs_delta_logit']:.3g} ({'PASS' if eq['passed'] else 'FAIL'})",
    ]
    if "cnn_vs_discover" in summary:
        lines += ["", *_compare_lines(summary["cnn_vs_discover"])]
    if "vit" in summary:
        lines += ["", *_vit_lines(summary["vit"], summary["test_images"])]
    return "\n".join(lines)


def _gain(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _compare_lines(c: dict[str, Any]) -> list[str]:
    """Hesse's labelled split and ELUDe's discover on the same CNN units."""
    lines = [
        f"ELUDe discover (no labels) on the units Hesse split, top-{c['k']} label purity of "
        "the test images (subunits - unit):",
        f"{'unit':>4}  {'Hesse K':>7} {'gain':>7}  {'discover K':>10} {'gain':>7}",
    ]
    for row in c["units"]:
        h, d = row["hesse"], row["discover"]
        lines.append(
            f"{row['unit']:>4}  {h['k']:>7} {_gain(h['purity_gain']):>7}  {d['k']:>10} "
            f"{_gain(d['purity_gain']):>7}"
        )
    for name in ("hesse", "discover"):
        rep = c[name]
        if rep is None:
            lines.append(f"{name}: split none of these units")
        else:
            lines.append(
                f"{name}: mean gain {_gain(rep['purity_gain'])} over {rep['units']} split "
                f"unit(s) (random control {_gain(rep['random_gain'])})"
            )
    return lines


def _mean_k(hist: dict[str, int]) -> float:
    n = sum(hist.values())
    return sum(int(k) * v for k, v in hist.items()) / n if n else 1.0


def _vit_lines(v: dict[str, Any], n_test: int) -> list[str]:
    """The demo ViT: ELUDe's split of every MLP layer and its top-k purity."""
    k = v["purity"]["k"]
    lines = [
        f"DigitsViT: test accuracy {v['test_accuracy']:.3f}; ELUDe discover on "
        f"{len(v['layers'])} MLP layers (training digits, no labels), top-{k} label purity "
        "on the test digits:",
        f"{'layer':<18} {'split':>9}  {'mean K':>6}  {'purity gain':>11}  {'random':>7}",
    ]
    for name, lay in v["layers"].items():
        pur = lay["purity"]
        lines.append(
            f"{name:<18} {lay['split']:>4}/{lay['examined']:<4}  {_mean_k(lay['k_histogram']):>6.2f}"
            f"  {_gain(pur.get('purity_gain')):>11}  {_gain(pur.get('random_gain')):>7}"
        )
    for name, part in (("all", {**v["split"], "purity": v["purity"]}), *v["by_type"].items()):
        pur = part["purity"]
        if not pur.get("units"):
            lines.append(f"{name:<4} no unit split")
            continue
        lines.append(
            f"{name:<4} {part['split']}/{part['examined']} units split "
            f"({part['split_fraction']:.0%}, mean K {part['mean_k']:.2f}): purity "
            f"{pur['unit_purity']:.3f} -> {pur['subunit_purity']:.3f} "
            f"({_gain(pur['purity_gain'])}; random {_gain(pur['random_gain'])}), "
            f"entropy {pur['entropy_change']:+.2f} bits"
        )
    target, eq = v["target"], v["equivalence"]
    delta = ", ".join(f"{d:.3g} ({t})" for t, d in eq["max_abs_delta_logit"].items())
    lines += [
        f"target: purity gain >= {target['purity_gain']:+.2f} with >= "
        f"{target['split_fraction']:.0%} of units split: {'MET' if v['met'] else 'NOT MET'}",
        f"split ViT vs original on the {n_test} test images: max |delta logit| = {delta} "
        f"({'PASS' if eq['passed'] else 'FAIL'})",
    ]
    return lines
