"""Real loading paths (local timm weights, ImageFolder) on small files the tests write."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import neuronsplit as ns
from neuronsplit.loading import image_folder_loader, load_timm_model


def test_local_safetensors_weights_are_loaded(tmp_path) -> None:
    source = load_timm_model("resnet18", num_classes=3)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_timm_model("resnet18", weights=path, num_classes=3)
    assert not loaded.training
    for (name, a), (_, b) in zip(
        source.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_dinov2_local_weights_are_resampled_to_224(tmp_path) -> None:
    """timm's checkpoint filter still runs: 518 px position embeddings are resampled to 224."""
    big = load_timm_model("vit_small_patch14_dinov2", img_size=518)
    path = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(path))
    small = load_timm_model("vit_small_patch14_dinov2", weights=path, img_size=224)
    assert small.pos_embed.shape[1] == 257 and big.pos_embed.shape[1] == 1370
    assert torch.equal(small.blocks[0].mlp.fc1.weight, big.blocks[0].mlp.fc1.weight)


def test_missing_weight_file_names_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_timm_model("resnet18", weights=tmp_path / "nope.safetensors")


def test_image_folder_scan(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("b_cat", "a_dog"):  # sorted order decides the class index, as in ImageFolder
        (tmp_path / cls).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    model = load_timm_model("resnet18", num_classes=2)
    loader = image_folder_loader(tmp_path, model, batch_size=4)
    assert loader.dataset.classes == ["a_dog", "b_cat"]
    x, y = next(iter(loader))
    assert tuple(x.shape[1:]) == (3, 224, 224)  # the model's eval transform was applied
    res = ns.scan(model, loader, ["layer4.1.conv2"], progress=False)
    assert res.class_counts.tolist() == [3, 3]
    with pytest.raises(FileNotFoundError, match="sub-folder per class"):
        image_folder_loader(tmp_path / "missing")
