"""Every public function checks its arguments up front: a typed NeuronSplitError (which also
derives from the matching built-in) whose message names the value; a test walks each function.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from neuronsplit import relevance
from neuronsplit.cli import main as cli_main
from neuronsplit.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    InvalidTargetError,
    MissingFileError,
    NeuronSplitError,
    UnknownLayerError,
    UnknownSubunitError,
)
from neuronsplit.plan import UnitSplit

DT = torch.float64


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(DT).eval()


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(24, 4, generator=gen, dtype=DT)
    return DataLoader(TensorDataset(x, torch.arange(24) % 3), batch_size=8)


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    model = _model()
    res = ns.scan(model, _loader(), ["0"], 3, progress=False)
    plan = ns.SplitPlan([UnitSplit("0", 1, [[0, 1], [2]], shared=[3])])
    split = ns.apply_plan(model, plan)
    unit = ns.find_polysemantic(res, gamma=1.0, include_negative=True, p=0.01, tau=0.01)[0]
    return {"model": model, "res": res, "plan": plan, "split": split, "unit": unit}


Call = Callable[[dict[str, Any]], Any]


def _refs(w: dict[str, Any], refs: Any = "0/u1/k0", dataset: Any = None, **kwargs: Any) -> Any:
    from neuronsplit.visual import reference_images

    data = torch.rand(6, 4, dtype=DT) if dataset is None else dataset
    return reference_images(w["split"], data, refs, progress=False, **kwargs)


#: (name, call with the bad argument, error type, message pattern)
CASES: list[tuple[str, Call, type[Exception], str]] = [
    # scan
    ("scan layers empty", lambda w: ns.scan(w["model"], _loader(), []), InvalidArgumentError, "layers is empty"),
    ("scan layers twice", lambda w: ns.scan(w["model"], _loader(), ["0", "0"]), InvalidArgumentError, r"lists \['0'\] twice"),
    ("scan layer name", lambda w: ns.scan(w["model"], _loader(), ["9"]), UnknownLayerError, "no layer '9'"),
    ("scan layer type", lambda w: ns.scan(w["model"], _loader(), [5]), ArgumentTypeError, "non-empty strings, got 5"),
    ("scan model", lambda w: ns.scan("resnet50", _loader(), ["0"]), ArgumentTypeError, "model must be a torch.nn.Module, got str"),
    ("scan target", lambda w: ns.scan(w["model"], _loader(), ["0"], target="logit"), InvalidArgumentError, "target must be one of 'label', 'prediction'; got 'logit'"),
    ("scan tau_grid", lambda w: ns.scan(w["model"], _loader(), ["0"], tau_grid=[0.0]), InvalidArgumentError, r"tau_grid entry must be in \(0, 1\], got 0.0"),
    ("scan tau_grid dup", lambda w: ns.scan(w["model"], _loader(), ["0"], tau_grid=[0.1, 0.1]), InvalidArgumentError, "distinct"),
    ("scan num_classes", lambda w: ns.scan(w["model"], _loader(), ["0"], 0), InvalidArgumentError, "num_classes must be >= 1, got 0"),
    ("scan top_n", lambda w: ns.scan(w["model"], _loader(), ["0"], top_n=-1), InvalidArgumentError, r"top_n .* must be >= 0, got -1"),
    ("scan max_batches", lambda w: ns.scan(w["model"], _loader(), ["0"], max_batches=0), InvalidArgumentError, "max_batches must be >= 1, got 0"),
    ("scan max_batches type", lambda w: ns.scan(w["model"], _loader(), ["0"], max_batches=1.5), ArgumentTypeError, "max_batches must be an int, got float 1.5"),
    ("scan progress", lambda w: ns.scan(w["model"], _loader(), ["0"], progress="yes"), ArgumentTypeError, "progress must be True or False"),
    ("scan sample_offset", lambda w: ns.scan(w["model"], _loader(), ["0"], sample_offset=-2), InvalidArgumentError, "sample_offset must be >= 0"),
    # detection
    ("detect result", lambda w: ns.find_polysemantic("scan.safetensors"), ArgumentTypeError, "needs a ScanResult"),
    ("detect tau", lambda w: ns.find_polysemantic(w["res"], tau=1.5), InvalidArgumentError, r"tau must be in \(0, 1\], got 1.5"),
    ("detect p", lambda w: ns.find_polysemantic(w["res"], p=0), InvalidArgumentError, r"p must be in \(0, 1\], got 0.0"),
    ("detect gamma", lambda w: ns.find_polysemantic(w["res"], gamma=2), InvalidArgumentError, r"gamma must be in \[-1, 1\], got 2.0"),
    ("detect cos_low", lambda w: ns.find_polysemantic(w["res"], cos_low=0.6, gamma=0.5), InvalidArgumentError, "cos_low=0.6 is not below gamma=0.5"),
    ("detect layers", lambda w: ns.find_polysemantic(w["res"], layers=["0", "0"]), InvalidArgumentError, "twice"),
    ("detect unknown layer", lambda w: ns.find_polysemantic(w["res"], layers=["2"]), UnknownLayerError, "was not scanned"),
    ("detect classes", lambda w: ns.find_polysemantic(w["res"], classes=[9]), InvalidArgumentError, "classes entry must be <= 2, got 9"),
    ("detect off-grid tau", lambda w: ns.find_polysemantic(w["res"], tau=0.04), InvalidArgumentError, "not on this scan's tau grid"),
    # plan_split
    ("plan unit", lambda w: ns.plan_split([], w["res"], rho=0.5), ArgumentTypeError, "needs a PolysemanticUnit"),
    ("plan result", lambda w: ns.plan_split(w["unit"], None, rho=0.5), ArgumentTypeError, "result must be the ScanResult"),
    ("plan rho", lambda w: ns.plan_split(w["unit"], w["res"], rho=1.5), InvalidArgumentError, r"rho .* must be in \(0, 1\], got 1.5"),
    ("plan rho auto", lambda w: ns.plan_split(w["unit"], w["res"]), InvalidArgumentError, "pass the training loader"),
    ("plan merge", lambda w: ns.plan_split(w["unit"], w["res"], rho=0.5, merge="sum"), ns.PlanError, "merge must be one of"),
    ("plan mode", lambda w: ns.plan_split(w["unit"], w["res"], rho=0.5, mode="abs"), InvalidArgumentError, "mode must be one of 'faithful', 'magnitude'"),
    ("plan gamma", lambda w: ns.plan_split(w["unit"], w["res"], rho=0.5, gamma=2), InvalidArgumentError, r"gamma must be in \[-1, 1\], got 2.0"),
    ("plan single concept", lambda w: ns.plan_split(w["unit"], w["res"], rho=0.5, gamma=-1.0), InvalidArgumentError, r"single concept .* at gamma=-1.0 \(passed to plan_split\).*pass gamma= above"),
    ("plan max_images", lambda w: ns.plan_split(w["unit"], w["res"], _loader(), model=w["model"], max_images=0), InvalidArgumentError, "max_images must be >= 1"),
    ("plan model", lambda w: ns.plan_split(w["unit"], w["res"], _loader(), model="m"), ArgumentTypeError, "model must be a torch.nn.Module"),
    # apply, verify, files
    ("apply model", lambda w: ns.apply_plan("m", w["plan"]), ArgumentTypeError, "model must be a torch.nn.Module"),
    ("apply plan", lambda w: ns.apply_plan(w["model"], {"0": 1}), ArgumentTypeError, "plan must be a SplitPlan"),
    ("verify split", lambda w: ns.verify_equivalence(w["model"], "s", torch.rand(2, 4)), ArgumentTypeError, "split must be a torch.nn.Module"),
    ("verify atol", lambda w: ns.verify_equivalence(w["model"], w["split"], torch.rand(2, 4), atol=-1), InvalidArgumentError, r"atol must be in \[0, inf\)"),
    ("verify dtype", lambda w: ns.verify_equivalence(w["model"], w["split"], torch.rand(2, 4), dtype=torch.int64), ArgumentTypeError, "floating torch.dtype"),
    ("verify flag", lambda w: ns.verify_equivalence(w["model"], w["split"], torch.rand(2, 4), allow_unused=1), ArgumentTypeError, "allow_unused must be True or False"),
    ("save model", lambda w: ns.save("s", "/tmp/x"), ArgumentTypeError, "split_model must be a torch.nn.Module"),
    ("load model", lambda w: ns.load("/tmp/x", "m"), ArgumentTypeError, "model must be a torch.nn.Module"),
    # attribution
    ("disentangle model", lambda w: ns.Disentangle("m"), ArgumentTypeError, "Disentangle needs an nn.Module"),
    ("disentangle plan", lambda w: ns.Disentangle(w["model"], {"0": 1}), ArgumentTypeError, "plan must be a SplitPlan"),
    ("selector token", lambda w: ns.subunit_selector(w["split"], ("0", 1, 1), token=0, ndim=2), InvalidArgumentError, "token=0 needs a token output"),
    ("selector ndim", lambda w: ns.subunit_selector(w["split"], ("0", 1, 1), ndim=1), InvalidArgumentError, "ndim must be >= 2"),
    # steering
    ("steer model", lambda w: ns.steer("m", {}), ArgumentTypeError, "split_model must be a torch.nn.Module, got str"),
    ("steer scales", lambda w: ns.steer(w["split"], [("0", 1, 0)]), ArgumentTypeError, "scales must be a mapping"),
    ("steer key", lambda w: ns.steer(w["split"], {"0": 0.0}), ArgumentTypeError, r"SubunitRef or a \(layer, unit, k\) tuple, got str '0'"),
    ("steer layer", lambda w: ns.steer(w["split"], {("2", 0, 0): 0.0}), UnknownLayerError, "not a split layer"),
    ("steer unknown layer", lambda w: ns.steer(w["split"], {("9", 0, 0): 0.0}), UnknownLayerError, "no layer '9'"),
    ("steer unit", lambda w: ns.steer(w["split"], {("0", 0, 0): 0.0}), ns.UnknownSubunitError, "unit 0 is not split"),
    ("steer k", lambda w: ns.steer(w["split"], {("0", 1, 2): 0.0}), ns.UnknownSubunitError, "subunit k=2 does not exist"),
    ("steer alpha", lambda w: ns.steer(w["split"], {("0", 1, 0): float("inf")}), InvalidArgumentError, "must be finite, got inf"),
    ("steer alpha type", lambda w: ns.steer(w["split"], {("0", 1, 0): None}), ArgumentTypeError, "must be a number, got NoneType"),
    ("steer twice", lambda w: ns.steer(w["split"], {("0", 1, -1): 0.0, ("0", 1, "residual"): 1.0}), InvalidArgumentError, "twice"),
    ("steer permanent", lambda w: ns.steer(w["split"], {}, permanent=1), ArgumentTypeError, "permanent must be True or False"),
    ("steer scales file", lambda w: ns.nn.load_scales("/nonexistent-scales.json"), MissingFileError, "/nonexistent-scales.json"),
    ("merge scale", lambda w: w["split"][0].merge.scaled({(1, 1): float("nan")}).__enter__(), InvalidArgumentError, "must be finite, got nan"),
    ("merge scale type", lambda w: w["split"][0].merge.scaled({(1, 1): "x"}).__enter__(), ArgumentTypeError, "must be a number, got str 'x'"),
    ("fractions tau", lambda w: ns.concept_fractions(w["model"], w["split"], "0", 1, torch.rand(3, 4, dtype=DT), torch.tensor([0, 1, 2]), [[0], [1]], tau=2), InvalidArgumentError, r"tau must be in \[0, 1\]"),
    ("fractions labels", lambda w: ns.concept_fractions(w["model"], w["split"], "0", 1, torch.rand(3, 4, dtype=DT), torch.tensor([0.0, 1, 2]), [[0], [1]]), InvalidArgumentError, "labels must be integer class indices"),
    ("fractions unit", lambda w: ns.concept_fractions(w["model"], w["split"], "0", 9, torch.rand(3, 4, dtype=DT), torch.tensor([0, 1, 2]), [[0], [1]]), InvalidArgumentError, "unit must be <= 5, got 9"),
    ("evaluate tau", lambda w: ns.evaluate(w["model"], w["split"], _loader(), tau=-0.1), InvalidArgumentError, r"tau must be in \[0, 1\], got -0.1"),
    ("evaluate class_share", lambda w: ns.evaluate(w["model"], w["split"], _loader(), class_share=0), InvalidArgumentError, r"class_share must be in \(0, 1\], got 0.0"),
    ("evaluate labels", lambda w: ns.evaluate(w["model"], w["split"], _loader(), labels="yes"), ArgumentTypeError, "labels must be True or False, got str 'yes'"),
    ("evaluate split", lambda w: ns.evaluate(w["model"], "split", _loader()), ArgumentTypeError, "split must be a torch.nn.Module, got str"),
    ("evaluate plan", lambda w: ns.evaluate(w["model"], w["split"], _loader(), plan="plan.json"), ArgumentTypeError, "plan must be a SplitPlan or None, got str"),
    ("evaluate nothing", lambda w: ns.evaluate(w["model"], None, _loader()), ArgumentTypeError, "needs the split model or a plan"),
    # reference images (neuronsplit.visual)
    ("reference_images k", lambda w: _refs(w, k=0), InvalidArgumentError, "k must be >= 1, got 0"),
    ("reference_images by", lambda w: _refs(w, by="max"), InvalidArgumentError, "by must be one of 'activation', 'relevance'; got 'max'"),
    ("reference_images subunit", lambda w: _refs(w, refs="0/u1/k7"), UnknownSubunitError, "subunit k=7 does not exist for unit 1"),
    ("reference_images unsplit unit", lambda w: _refs(w, refs="0/u2/k1"), UnknownSubunitError, "unit 2 of layer '0' is not split"),
    ("reference_images dataset", lambda w: _refs(w, dataset=torch.empty(0, 4, dtype=DT)), InvalidArgumentError, "dataset is empty"),
    ("reference_images scan", lambda w: _refs(w, scan="scan.safetensors"), ArgumentTypeError, "scan must be a ScanResult or None, got str"),
    ("reference_images labels", lambda w: _refs(w, by="relevance"), InvalidTargetError, "pass .*target='prediction'"),
    # LRP
    ("vit composite epsilon", lambda w: relevance.TimmViTComposite(epsilon=-1.0), InvalidArgumentError, r"epsilon must be in \(0, inf\), got -1.0"),
    ("vit composite gamma", lambda w: relevance.TimmViTComposite(gamma="0.25"), ArgumentTypeError, "gamma must be a number, got str '0.25'"),
    ("vit composite first rule", lambda w: relevance.TimmViTComposite(first_rule="flat"), ArgumentTypeError, "first_rule must be a zennit rule.*got str"),
    ("vit composite canonizers", lambda w: relevance.TimmViTComposite(canonizers=["abc"]), ArgumentTypeError, "Canonizer objects, got str 'abc'"),
    ("fast epsilon zero params", lambda w: relevance.FastEpsilon(zero_params=["bias"]), InvalidArgumentError, r"zero_params=\['bias'\]"),
    ("split canonizer pairs", lambda w: relevance.SplitLayerCanonizer([("1", "0")]).apply(w["split"]), InvalidArgumentError, r"\('1', '0'\) is not a split layer"),
    # loading, demo
    ("timm name", lambda w: ns.load_timm_model(None), ArgumentTypeError, "timm model name"),
    ("timm weights", lambda w: ns.load_timm_model("resnet18", weights="/nonexistent.safetensors"), MissingFileError, "/nonexistent.safetensors"),
    ("image folder", lambda w: ns.image_folder_loader("/nonexistent-folder"), MissingFileError, "/nonexistent-folder"),
    ("image folder batch", lambda w: ns.image_folder_loader("/tmp", batch_size=0), InvalidArgumentError, "batch_size must be >= 1"),
    ("demo top", lambda w: __import__("neuronsplit.demo").demo.run_demo("/tmp/x", top=0), InvalidArgumentError, "top .* must be >= 1, got 0"),
    ("demo gamma", lambda w: __import__("neuronsplit.demo").demo.run_demo("/tmp/x", gamma=3), InvalidArgumentError, r"gamma must be in \[-1, 1\]"),
    # sparse dictionaries (ns.sdl)
    ("lrb interference", lambda w: ns.sdl.make_bench(64, 16, 0.9, 0.0), InvalidArgumentError, r"max_interference=0 <= 0 is impossible for n=64 > 2 n_p = 32"),
    ("lrb sparsity", lambda w: ns.sdl.make_bench(8, 8, 1.0, 0.5), InvalidArgumentError, r"sparsity must be in \[0, 1\), got 1.0"),
    ("sae k", lambda w: ns.sdl.SparseAutoencoder(4, 8, k=9), InvalidArgumentError, r"k=9 is larger than the dictionary \(n_latents=8\)"),
    ("sae activation", lambda w: ns.sdl.SparseAutoencoder(4, 8, activation="gelu"), InvalidArgumentError, "activation must be one of 'relu'"),
    ("lrb anchors", lambda w: ns.sdl.gt_anchors(ns.sdl.make_bench(8, 8, 0.9, 0.5), 9), InvalidArgumentError, "k=9 anchors but the bench has only n=8"),
    ("train data", lambda w: ns.sdl.train_sae(ns.sdl.SparseAutoencoder(4, 8, k=2), "acts.npy"), ArgumentTypeError, "data must be a LinearRepresentationBench"),
    ("train model", lambda w: ns.sdl.train_sae(w["model"], torch.ones(4, 4)), ArgumentTypeError, "model must be a SparseAutoencoder, got Sequential"),
    ("splice reads", lambda w: ns.sdl.spliced_output_change(w["model"], "0", lambda t: t, _loader(), reads="weights"), InvalidArgumentError, "reads must be 'output' or 'input'"),
    # the HTML report
    ("report max_units", lambda w: ns.report(w["model"], w["plan"], _loader(), "/tmp/r.html", max_units=0), InvalidArgumentError, "max_units must be >= 1, got 0"),
    ("report out", lambda w: ns.report(w["model"], w["plan"], _loader(), "/tmp/r.txt"), InvalidArgumentError, r"out '/tmp/r.txt' must end in \.html"),
    ("report units", lambda w: ns.report(w["model"], w["plan"], _loader(), "/tmp/r.html", units=[("0", 2)]), ns.UnknownSubunitError, "unit 2 of layer '0' is not split"),
    ("report plan", lambda w: ns.report(w["model"], "plan.json", _loader(), "/tmp/r.html"), ArgumentTypeError, "plan must be a SplitPlan, got str"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "error", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_argument_checks(
    world: dict[str, Any], name: str, call: Call, error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern) as info:
        call(world)
    assert isinstance(info.value, NeuronSplitError), f"{name}: {type(info.value).__mro__}"
    # every neuronsplit error is also the built-in a caller would expect
    builtins = (ValueError, TypeError, LookupError, OSError, RuntimeError, FloatingPointError)
    assert isinstance(info.value, builtins)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--top", "0"], "argument --top: 0 is not >= 1"),
        (["demo", "--top", "-1"], "argument --top: -1 is not >= 1"),
        (["demo", "--tau", "0"], r"argument --tau: 0.0 is not in \(0, 1\]"),
        (["demo", "--p", "1.5"], r"argument --p: 1.5 is not in \(0, 1\]"),
        (["demo", "--gamma", "2"], r"argument --gamma: 2.0 is not in \[-1, 1\]"),
        (["demo", "--top", "two"], "argument --top: 'two' is not an integer"),
        (["demo", "--tau", "0.04"], "argument --tau: 0.04 is not on the demo scan's tau grid"),
        (["detect", "--scan", "s", "--p", "1.5"], r"argument --p: 1.5 is not in \(0, 1\]"),
        ("split --scan s --out o --top 0".split(), "argument --top: 0 is not >= 1"),
        (["scan", "--model", "demo"], "required: --layers"),
        (["insights", "--port", "70000"], r"argument --port: 70000 is not in \[0, 65535\]"),
        (["insights", "--images", "-1"], "argument --images: -1 is not >= 0"),
        (["insights", "--batch-size", "0"], "argument --batch-size: 0 is not >= 1"),
        (["insights", "--seed", "x"], "argument --seed: 'x' is not an integer"),
        (
            "steer --model demo --split s --scales a.json --out o --num-classes 0".split(),
            "argument --num-classes: 0 is not >= 1",
        ),
        (["steer", "--model", "demo"], "required: --split, --scales, --out"),
        (["report", "--plan", "p", "--max-units", "0"], "argument --max-units: 0 is not >= 1"),
        (["report", "--out", "r.html"], "required: --plan"),
    ],
)
def test_cli_options_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_options_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, words in {
        "--top": "units to split",
        "--tau": "importance threshold",
        "--p": "share of a class's images",
        "--gamma": "ARV cosine below which",
    }.items():
        assert re.search(rf"{option} \S+ {words}", text), option


def test_plan_split_refuses_a_model_other_than_the_scanned_one(world: dict[str, Any]) -> None:
    other = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).to(DT)
    with pytest.raises(ns.PlanMismatchError, match=r"6 units x 5 inputs, the scanned one 6 x 4"):
        ns.plan_split(world["unit"], world["res"], _loader(), model=other, gamma=1.0)
