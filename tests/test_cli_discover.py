"""``neuronsplit discover`` end to end on ImageFolder trees the tests write: the demo ViT on 8x8
greyscale digits, and a timm ViT built from a name with a local weight file. The saved split
loads with ``ns.load`` and computes what the original computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import neuronsplit as ns
from neuronsplit.cli import main
from neuronsplit.demo import get_demo_vit, load_digits
from neuronsplit.loading import load_timm_model
from neuronsplit.plan import SplitPlan

VIT_LAYERS = ["blocks.3.mlp.fc1", "blocks.3.mlp.fc2"]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 training digits as 8x8 greyscale PNGs, one folder per class."""
    root = tmp_path_factory.mktemp("digits")
    data = load_digits("train")
    for i in range(300):
        label = int(data.labels[i])
        pixels = (data.images[i, 0].numpy() * 255).round().astype(np.uint8)
        (root / f"digit_{label}").mkdir(exist_ok=True)
        Image.fromarray(pixels, mode="L").save(root / f"digit_{label}" / f"{i}.png")
    return root


def _argv(**args: object) -> list[str]:
    out = ["discover", "--no-progress"]
    for key, value in args.items():
        flag = f"--{key.replace('_', '-')}"
        out += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return out


def test_discover_demo_vit_writes_a_loadable_exact_split(
    digits_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(_argv(model="demo-vit", data=digits_folder, layers=VIT_LAYERS, out=out))
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "plan.json", "plan.safetensors", "weights.safetensors"
    ]  # fmt: skip
    plan = SplitPlan.load(out / "plan.json")
    layers = plan.meta["elude"]["layers"]
    assert list(layers) == VIT_LAYERS
    assert plan.meta["discover_command"]["model"] == "demo-vit"
    assert 0 < len(plan) == sum(v["split"] for v in layers.values())
    assert set(plan.layers) <= set(VIT_LAYERS)
    for name, info in layers.items():
        assert info["samples_seen"] == 300 * 17  # every token of every image
        assert f"{name}: {info['split']}/{info['examined']} units split" in printed
    model = get_demo_vit()
    split = ns.load(out, model)
    assert ns.nn.plan_of(split) == plan.with_meta({})  # the same splits
    report = ns.verify_equivalence(model, split, load_digits("test").images[:64])
    assert report.passed, report.worst()


def _rgb_folder(root: Path, classes: int = 3, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root


def _save_weights(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_discover_timm_vit_from_name_and_local_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A timm ViT built from its name with weights from a file the test writes; RGB images of
    another size are resized to ``--image-size``."""
    kwargs = {"img_size": 32, "num_classes": 3}
    source = load_timm_model("vit_tiny_patch16_224", **kwargs)
    weights = _save_weights(source, tmp_path / "vit.safetensors")
    out = tmp_path / "out"
    argv = _argv(
        model="vit_tiny_patch16_224", weights=weights, num_classes=3, image_size=32,
        data=_rgb_folder(tmp_path / "images"), layers=["blocks.1.mlp.fc2"], out=out,
        batch_size=8, max_batches=2, top_n=16, min_silhouette=0,
    )  # fmt: skip
    assert main(argv) == 0
    assert "units split in 1 layer(s)" in capsys.readouterr().out
    plan = SplitPlan.load(out / "plan.json")
    # 2 batches of 8 images, 4 patches + the class token each (the 40x36 images were resized:
    # a 32 px ViT refuses others)
    assert plan.meta["elude"]["layers"]["blocks.1.mlp.fc2"]["samples_seen"] == 16 * 5
    assert len(plan) > 0  # random weights, but min_silhouette=0 accepts most clusterings
    assert plan.meta["discover_command"]["image_size"] == 32
    model = load_timm_model("vit_tiny_patch16_224", weights=weights, **kwargs)
    split = ns.load(out, model)
    assert ns.nn.plan_of(split).with_meta({}) == plan.with_meta({})
    assert ns.verify_equivalence(model, split, torch.randn(4, 3, 32, 32)).passed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model": "no_such_model_xyz"},
            "neither 'demo' nor 'demo-cnn' nor 'demo-vit' nor a timm or torchvision",
        ),
        ({"model": "weights.safetensors"}, "is a file; --model takes the architecture"),
        ({"weights": "w.safetensors"}, "apply to timm / torchvision models, not to 'demo-vit'"),
        ({"image_size": 16}, "takes 8x8 images"),
        ({"data": "missing"}, "does not exist"),
        ({"data": "empty"}, "holds no usable ImageFolder tree"),
        ({"layers": ["blocks.3.mlp.fc9"]}, "blocks.3.mlp.fc9"),
        ({"layers": ["blocks.3.norm1"]}, "blocks.3.norm1"),
        ({"out": "a_file"}, "is a file; give a directory"),
        ({"tokens": "cls", "model": "demo-cnn", "layers": ["fc2"]}, "tokens='cls'"),
    ],
)
def test_discover_user_errors_are_reported(
    change: dict, message: str, digits_folder: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    args = {"model": "demo-vit", "data": digits_folder, "layers": VIT_LAYERS}
    args.update(change)
    args["out"] = tmp_path / change.get("out", "out")
    for key in ("data", "weights"):
        if key in change:
            args[key] = tmp_path / change[key]
    assert main(_argv(**args)) == 2  # a user error
    err = capsys.readouterr().err
    assert err.startswith("neuronsplit discover: error:") and message in err, err
    assert not (tmp_path / "out").exists()


def test_discover_weights_of_another_architecture_are_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = load_timm_model("vit_tiny_patch16_224", img_size=32, num_classes=3, depth=2)
    weights = _save_weights(small, tmp_path / "vit2.safetensors")
    argv = _argv(
        model="vit_tiny_patch16_224", weights=weights, num_classes=3, image_size=32,
        data=_rgb_folder(tmp_path / "images", 2, 2), layers=["blocks.1.mlp.fc1"],
        out=tmp_path / "out",
    )  # fmt: skip
    assert main(argv) == 2  # a user error
    err = capsys.readouterr().err
    assert "does not fit --model 'vit_tiny_patch16_224'" in err and "blocks.2" in err, err


@pytest.mark.parametrize("bad", [["--max-concepts", "1"], ["--top-n", "x"], ["--tokens", "cls2"]])
def test_discover_bad_option_values_stop_argparse(bad: list[str]) -> None:
    argv = _argv(model="demo-cnn", data="d", layers=["fc2"], out="o") + bad
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_discover_default_top_n_is_discovers(digits_folder: Path, tmp_path: Path) -> None:
    from neuronsplit.methods.elude import DEFAULT_TOP_N

    argv = _argv(model="demo-cnn", data=digits_folder, layers=["fc2"], out=tmp_path, max_batches=1)
    assert main(argv) == 0
    assert SplitPlan.load(tmp_path / "plan.json").meta["elude"]["top_n"] == DEFAULT_TOP_N
