"""Loading models and data the way real runs do: timm weights (hub or local file), ImageFolder.

The build machines cannot download anything, so the tests exercise exactly this code on small
files they write themselves (a local safetensors checkpoint, a tiny ImageFolder tree).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ._checks import check_bool, check_int, check_module
from .errors import ArgumentTypeError, MissingFileError

__all__ = ["load_timm_model", "image_folder_loader"]


def load_timm_model(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm model in eval mode, with hub weights, a local weight file, or none.

    Parameters
    ----------
    name : str
        A timm model name, e.g. ``"resnet50.tv_in1k"`` (Hesse et al.'s ResNet-50 weights),
        ``"vit_base_patch16_224.augreg2_in21k_ft_in1k"`` or ``"vit_base_patch14_dinov2.lvd142m"``.
    weights : path-like, optional
        A local ``.safetensors`` or torch checkpoint. Loaded through timm's pretrained machinery
        (``pretrained_cfg_overlay=dict(file=...)``), so timm's checkpoint filters still run
        (DINOv2 conversion, position-embedding resampling for another ``img_size``).
    pretrained : bool
        Download the hub weights (needs network access). Ignored when ``weights`` is given.
    **kwargs
        Passed to ``timm.create_model``, e.g. ``num_classes=10`` or ``img_size=224``.

    Returns
    -------
    nn.Module
        The model in eval mode.

    Raises
    ------
    MissingFileError
        If ``weights`` does not exist (a ``FileNotFoundError``).

    Examples
    --------
    >>> model = load_timm_model("resnet18", num_classes=10)
    >>> model.training
    False
    """
    import timm

    if not isinstance(name, str) or not name:
        raise ArgumentTypeError(f"name must be a timm model name like 'resnet50', got {name!r}")
    check_bool(pretrained, "pretrained")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise MissingFileError(
                f"weight file {str(path)!r} does not exist; give the path of a .safetensors or "
                ".pth checkpoint, or use pretrained=True to download the hub weights"
            )
        overlay: dict[str, Any] = {"file": str(path)}
        if "num_classes" in kwargs:
            # timm drops the classifier of a checkpoint whose class count differs from the
            # pretrained cfg; a local file with its own head (a fine-tuned model) must keep it
            overlay["num_classes"] = kwargs["num_classes"]
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    else:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    return model.eval()


def image_folder_loader(
    root: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    shuffle: bool = False,
    transform: Any = None,
) -> DataLoader:
    """A DataLoader of ``(image, label)`` over an ImageFolder tree (``root/<class>/<image>``).

    Parameters
    ----------
    root : path-like
        Folder with one sub-folder per class; classes are indexed in sorted folder order,
        as ImageNet's ``train/`` is.
    model : nn.Module, optional
        A timm model; its evaluation transform (resize, center crop, normalisation) is used.
        Without a model and without ``transform``, images are only converted to tensors.
    batch_size, num_workers, shuffle : int, int, bool
        DataLoader settings.
    transform : callable, optional
        Overrides the model's transform.

    Returns
    -------
    DataLoader
        Yields ``(images, labels)``; ``loader.dataset.classes`` lists the class folders.

    Raises
    ------
    MissingFileError
        If ``root`` is not a directory (a ``FileNotFoundError``).

    Examples
    --------
    >>> loader = image_folder_loader("imagenet/train", model, batch_size=64)  # doctest: +SKIP
    """
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    check_int(batch_size, "batch_size", low=1)
    check_int(num_workers, "num_workers", low=0)
    check_bool(shuffle, "shuffle")
    if model is not None:
        check_module(model, "model")
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(
            f"image folder {str(root)!r} does not exist; it must hold one sub-folder per class"
        )
    if transform is None and model is not None:
        from timm.data import create_transform, resolve_data_config

        transform = create_transform(**resolve_data_config(model=model))
    dataset = ImageFolder(str(root), transform=transform or ToTensor())
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=shuffle)
