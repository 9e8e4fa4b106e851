"""Insights on a model other than the demo: a random-init timm ResNet-18 (3 classes, 32 px).

The fixed batch (the same images on every Fetch, seeded or chosen), Captum's warnings shown
once, the unit = sum of its subunits through Insights' call convention, the ``neuronsplit
insights`` command on files the test writes, and its one-line errors (exit code 2).
"""

from __future__ import annotations

import base64
import copy
import doctest
import importlib
import pkgutil
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("captum.insights", reason="needs the insights extra (captum==0.8.0 + flask)")
pytest.importorskip("timm")

from captum.insights.attr_vis import config, server  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data import create_transform, resolve_data_config  # noqa: E402

import neuronsplit.insights  # noqa: E402
from helpers import assert_unchanged, randomize_norms, snapshot  # noqa: E402
from neuronsplit import Disentangle  # noqa: E402
from neuronsplit.cli import main  # noqa: E402
from neuronsplit.errors import (  # noqa: E402
    InvalidArgumentError,
    PlanError,
    PlanMismatchError,
)
from neuronsplit.insights import InsightsApp, make_visualizer  # noqa: E402
from neuronsplit.loading import image_folder_loader, load_timm_model  # noqa: E402
from neuronsplit.plan import SplitPlan, UnitSplit  # noqa: E402

LAYER, UNIT = "layer4.1.conv2", 4  # unit 5 is silent (ReLU) on these images
CHOICES = (
    f"{LAYER}/u{UNIT}/k0",
    f"{LAYER}/u{UNIT}/k1",
    f"{LAYER}/u{UNIT}/residual",
    f"{LAYER}/u{UNIT}/unit",
)
CLASSES = ["ant", "bee", "cat"]
NOTICE = "It looks like that the attribution"  # Captum's no_grad warning, once per call
USER_ERROR = 2


def _plan() -> SplitPlan:
    # ResNet-18's layer4.1.conv2 has 512 input channels: two groups and a shared rest
    return SplitPlan(
        [
            UnitSplit(
                LAYER,
                UNIT,
                [list(range(0, 200)), list(range(200, 400))],
                shared=list(range(400, 512)),
                merge="disjoint",
            )
        ]
    )


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    # timm zero-inits the last BatchNorm of each block, which would silence every conv2 unit
    return randomize_norms(load_timm_model("resnet18", num_classes=3))


def _write_images(root: Path, per_class: int = 3) -> Path:
    gen = torch.Generator().manual_seed(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(40, 40, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{c}_{i}.png")
    return root


def _loader(root: Path, model: torch.nn.Module) -> torch.utils.data.DataLoader:
    # timm's evaluation transform at 32 px: resize, crop, to tensor, *normalise*
    transform = create_transform(**resolve_data_config({"input_size": (3, 32, 32)}, model=model))
    return image_folder_loader(root, model, batch_size=2, transform=transform)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = _write_images(tmp_path_factory.mktemp("images") / "train")
    model = _model()
    return {"root": root, "model": model, "loader": _loader(root, model)}


@pytest.fixture(scope="module")
def app(world: dict) -> Iterator[InsightsApp]:
    with make_visualizer(
        world["model"], _plan(), data=world["loader"], method_name="Disentangle (resnet)"
    ) as made:
        yield made
    assert "Disentangle (resnet)" not in config.ATTRIBUTION_NAMES_TO_METHODS


def _fetch(app: InsightsApp, method: str, arguments: dict) -> list[dict]:
    previous = server.visualizer
    server.visualizer = app.visualizer
    try:
        response = server.app.test_client().post(
            "/fetch",
            json={
                "attribution_method": method,
                "arguments": arguments,
                "prediction": "all",
                "classes": [],
            },
        )
    finally:
        server.visualizer = previous
    assert response.status_code == 200, response.data[:2000]
    return [o for per_input in response.get_json() for o in per_input]


def _pictures(outputs: list[dict]) -> list[tuple[str, str]]:
    return [(o["actual"]["label"], o["feature_outputs"][0]["base"]) for o in outputs]


def test_lists_disentangle_with_the_plans_subunits(app: InsightsApp) -> None:
    config_ = app.visualizer.get_insights_config()
    assert app.method_name in config_["methods"] and "Integrated Gradients" in config_["methods"]
    assert config_["classes"] == CLASSES  # the ImageFolder's class folders
    assert app.choices == CHOICES
    limit = config_["method_arguments"][app.method_name]["subunit"]["limit"]
    assert tuple(limit) == CHOICES


def test_every_fetch_shows_the_same_images(app: InsightsApp, world: dict) -> None:
    first = _fetch(app, "Integrated Gradients", {"n_steps": 4, "method": "gausslegendre"})
    subunit = _fetch(app, app.method_name, {"subunit": CHOICES[1]})
    unit = _fetch(app, app.method_name, {"subunit": CHOICES[3]})
    again = _fetch(app, "Integrated Gradients", {"n_steps": 4, "method": "gausslegendre"})
    assert len(first) == 4 == len(app.indices)
    assert _pictures(first) == _pictures(subunit) == _pictures(unit) == _pictures(again)
    assert [o["feature_outputs"][0]["name"] for o in first] == ["Image"] * 4
    for out in first:
        assert base64.b64decode(out["feature_outputs"][0]["base"]).startswith(b"\x89PNG")
    # the maps differ (IG vs one subunit): the fetches really ran different methods
    assert (
        first[0]["feature_outputs"][0]["modified"] != subunit[0]["feature_outputs"][0]["modified"]
    )
    assert [o["actual"]["label"] for o in first] == [CLASSES[int(y)] for y in app.labels]


def test_images_shown_unnormalised_and_model_input_normalised(app: InsightsApp, world: dict):
    dataset = world["loader"].dataset  # the user's dataset: transform ends in Normalize
    assert type(dataset.transform.transforms[-1]).__name__ == "Normalize"
    assert 0.0 <= float(app.images.min()) and float(app.images.max()) <= 1.0
    (feature,) = app.visualizer.features
    seen = torch.stack([feature.input_transforms[0](image) for image in app.images])
    expected = torch.stack([dataset[i][0] for i in app.indices])
    torch.testing.assert_close(seen, expected)
    assert torch.equal(app.labels, torch.tensor([dataset[i][1] for i in app.indices]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unit_is_the_sum_of_its_subunits_through_insights(
    app: InsightsApp, dtype: torch.dtype
) -> None:
    cls = config.ATTRIBUTION_NAMES_TO_METHODS[app.method_name]
    split = copy.deepcopy(app.model).to(dtype)  # Insights' cls(model) uses a split model given
    method = cls(split)
    (feature,) = app.visualizer.features
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-12}
    total = 0.0
    for image, label in zip(app.images, app.labels, strict=True):
        x = feature.input_transforms[0](image).unsqueeze(0).to(dtype)
        target = torch.tensor(int(label))  # Insights passes a 0-d tensor
        parts = [
            method.attribute.__wrapped__(method, (x,), target=target, subunit=choice)[0]
            for choice in CHOICES
        ]
        assert all(p.dtype == dtype and p.shape == x.shape for p in parts)
        # disjoint form: subunit k sees groups[k], the residual the shared channels; they add up
        torch.testing.assert_close(parts[0] + parts[1] + parts[2], parts[3], **tol)
        dis = Disentangle(split)
        expected = dis.attribute_unit(x, target=target, layer=LAYER, unit=UNIT).unit
        torch.testing.assert_close(parts[3], expected, **tol)
        total += float(parts[3].abs().sum())
    assert total > 0  # the unit is not silent on every image (that would make this vacuous)


def test_seeded_draw_and_chosen_images(world: dict) -> None:
    model, loader = world["model"], world["loader"]
    before = snapshot(model)
    with make_visualizer(model, _plan(), data=loader, seed=3, method_name="seed a") as a:
        drawn = a.indices
    with make_visualizer(model, _plan(), data=loader, seed=3, method_name="seed b") as b:
        assert b.indices == drawn and len(drawn) == 4 and list(drawn) == sorted(set(drawn))
    with make_visualizer(
        model, _plan(), data=loader, indices=[8, 0, 5], batch_size=1, method_name="chosen"
    ) as chosen:
        assert chosen.indices == (8, 0, 5) and chosen.labels.tolist() == [2, 0, 1]
        assert len(_fetch(chosen, "Saliency", {})) == 3
    assert_unchanged(model, before)  # the plan went to a copy


def test_captum_warnings_are_shown_once(world: dict) -> None:
    with make_visualizer(
        world["model"], _plan(), data=world["loader"], method_name="Disentangle (warnings)"
    ) as fresh:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            for _ in range(2):
                _fetch(fresh, fresh.method_name, {"subunit": CHOICES[0]})
                _fetch(fresh, "Saliency", {})
    notices = [w for w in shown if str(w.message).startswith(NOTICE)]
    assert len(notices) == 1, [str(w.message)[:60] for w in shown]
    assert notices[0].filename.endswith("batching.py")  # still points at Captum's line


def test_python_entry_point_errors(world: dict, tmp_path: Path) -> None:
    model, loader = world["model"], world["loader"]
    with pytest.raises(PlanMismatchError, match=r"ResNet has no layer 'fc2'"):
        make_visualizer(model, SplitPlan([UnitSplit("fc2", 0, [[0], [1]])]), data=loader)
    with pytest.raises(PlanError, match=r"ResNet has no split layers and no plan.*pass plan="):
        make_visualizer(model, data=loader)
    with pytest.raises(InvalidArgumentError, match=r"no images to show for ResNet: pass data="):
        make_visualizer(model, _plan())
    with pytest.raises(InvalidArgumentError, match=r"image index 9 is out of range for 9 images"):
        make_visualizer(model, _plan(), data=loader, indices=[0, 9])
    with pytest.raises(InvalidArgumentError, match=r"the data hold no images"):
        make_visualizer(model, _plan(), data=torch.utils.data.TensorDataset(torch.zeros(0, 3)))
    assert "Disentangle (subunits)" not in config.ATTRIBUTION_NAMES_TO_METHODS  # rolled back


# ---------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def files(world: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("cli")
    weights = out / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in world["model"].state_dict().items()}, weights)
    plan = _plan().save(out / "plan.json")
    empty = out / "empty"
    for name in CLASSES:
        (empty / name).mkdir(parents=True)
    return {
        "weights": str(weights),
        "plan": str(plan),
        "data": str(world["root"]),
        "empty": str(empty),
        "out": str(out),
    }


def _argv(files: dict[str, str], change: dict[str, str | None] | None = None) -> list[str]:
    options = {
        "--model": "resnet18",
        "--weights": files["weights"],
        "--num-classes": "3",
        "--image-size": "32",
        "--plan": files["plan"],
        "--data": files["data"],
    }
    options.update(change or {})
    argv = ["insights", "--dry-run"]
    for key, value in options.items():
        if value is not None:
            argv += [key, *value.split()]
    return argv


def test_cli_dry_run_on_a_timm_model(files: dict[str, str], capsys) -> None:
    assert main(_argv(files)) == 0
    out = capsys.readouterr().out
    assert "Integrated Gradients" in out and "Disentangle (subunits)" in out
    assert f"subunits of 'Disentangle (subunits)': {', '.join(CHOICES)}" in out
    assert main(_argv(files, {"--images": "8 0 5"})) == 0
    assert (
        "images (the same on every Fetch): 8 (cat), 0 (ant), 5 (bee)\n" in capsys.readouterr().out
    )
    assert not [n for n in config.ATTRIBUTION_NAMES_TO_METHODS if n.startswith("Disentangle (sub")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"--weights": "missing.safetensors"},
            r"'missing.safetensors' does not exist",
        ),
        ({"--plan": "missing.json"}, r"--plan 'missing.json' does not exist; give the plan file"),
        ({"--plan": None}, r"--model 'resnet18' needs --plan"),
        ({"--data": None}, r"--model 'resnet18' needs images of its own: give --data DIR"),
        ({"--data": "EMPTY"}, r"--data '.*empty' holds no usable ImageFolder tree"),
        ({"--data": "NOWHERE"}, r"image folder '.*nowhere' does not exist"),
        ({"--plan": "OTHER"}, r"--plan '.*other.json' does not fit --model 'resnet18'.*'fc2'"),
        ({"--plan": "GARBAGE"}, r"garbage.json"),
        ({"--images": "0 99"}, r"image index 99 is out of range for 9 images"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(
    files: dict[str, str], change: dict, message: str, capsys
) -> None:
    out = Path(files["out"])
    (out / "garbage.json").write_text("{not json")
    SplitPlan([UnitSplit("fc2", 0, [[0], [1]])]).save(out / "other.json")
    where = {
        "EMPTY": files["empty"],
        "NOWHERE": str(out / "nowhere"),
        "OTHER": str(out / "other.json"),
        "GARBAGE": str(out / "garbage.json"),
    }
    change = {k: where.get(v, v) if v else v for k, v in change.items()}
    assert main(_argv(files, change)) == USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("neuronsplit insights: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err


def test_docstring_examples_of_the_insights_modules_run() -> None:
    failed = {}
    for info in pkgutil.walk_packages(neuronsplit.insights.__path__, "neuronsplit.insights."):
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
        failed.update({info.name: result.failed} if result.failed else {})
    result = doctest.testmod(neuronsplit.insights, optionflags=doctest.ELLIPSIS, report=False)
    assert not failed and not result.failed, failed


def test_a_split_model_in_train_mode_is_left_as_it_was(world: dict) -> None:
    # a split model handed in directly is the user's own object: neither building the
    # visualizer nor a Fetch may run it in train mode (BatchNorm statistics, dropout)
    from neuronsplit import apply_plan

    split = apply_plan(world["model"], _plan()).train()
    before = snapshot(split)
    with make_visualizer(split, None, data=world["loader"], batch_size=2) as made:
        assert made.model is split  # shown as given, not copied
        out = _fetch(made, made.method_name, {"subunit": made.choices[0]})
        assert len(out) == 2
    assert split.training
    assert_unchanged(split, before)
