"""Random jitter, scale and rotation for feature visualisation, scaled to the image size.

An image optimised through a fixed view overfits that view: single-pixel patterns that drive
the unit only where they are. Lucid (Olah et al., 2017) therefore shows the model a randomly
moved, scaled and rotated copy at every step; what survives is what drives the unit from any
nearby view. For 224x224 inputs lucid's ``standard_transforms`` pad by 12, jitter by up to 8
pixels, scale by 0.9-1.1 and rotate by up to 10 degrees.

Here the three are one affine map per image, sampled on the CPU from per-image generators and
applied with ``grid_sample`` (bilinear, reflection at the border), so the output keeps the input
size (a timm ViT accepts no other) and a jitter can be a fraction of a pixel: the translation is
``8 / 224`` of the image side, at least half a pixel, which is half a pixel for the 8x8 digits
(a whole-pixel jitter there moves an 8-pixel digit by an eighth of its size).

Examples
--------
>>> import torch
>>> t = Transforms.for_size(224, 224)
>>> t.jitter, t.scale, t.degrees
(8.0, (0.9, 1.1), 10.0)
>>> Transforms.for_size(8, 8).jitter
0.5
>>> x = torch.rand(2, 1, 8, 8)
>>> theta = Transforms(0.0, (1.0, 1.0), 0.0).sample([torch.Generator(), torch.Generator()])
>>> torch.allclose(apply_affine(x, theta), x, atol=1e-6)  # the identity map
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["Transforms", "apply_affine"]

#: lucid's standard transforms for a 224-pixel image
_REFERENCE_SIZE = 224
_REFERENCE_JITTER = 8.0
_MIN_JITTER = 0.5


@dataclass(frozen=True)
class Transforms:
    """The ranges of the random affine map applied to every image at every step.

    Parameters
    ----------
    jitter : float
        Largest translation in pixels (uniform in ``[-jitter, jitter]`` on each axis).
    scale : (float, float)
        Range of the zoom factor (uniform).
    degrees : float
        Largest rotation (uniform in ``[-degrees, degrees]``).
    """

    jitter: float
    scale: tuple[float, float]
    degrees: float

    @classmethod
    def for_size(cls, height: int, width: int) -> Transforms:
        """Lucid's ranges for an image of this size: jitter ``8/224`` of the smaller side (at
        least half a pixel), zoom 0.9-1.1, rotation up to 10 degrees."""
        jitter = max(_MIN_JITTER, _REFERENCE_JITTER * min(height, width) / _REFERENCE_SIZE)
        return cls(jitter, (0.9, 1.1), 10.0)

    def sample(self, generators: Sequence[torch.Generator]) -> Tensor:
        """One affine map per generator, in pixel units: ``(n, 2, 3)`` rows ``[A | t]``.

        ``A`` rotates and zooms about the image centre and ``t`` translates; the map takes a
        pixel of the transformed image to where it is read in the original.
        """
        draws = torch.stack([torch.rand(4, generator=g, dtype=torch.float64) for g in generators])
        tx, ty = (2 * draws[:, 0] - 1) * self.jitter, (2 * draws[:, 1] - 1) * self.jitter
        lo, hi = self.scale
        zoom = lo + (hi - lo) * draws[:, 2]
        angle = (2 * draws[:, 3] - 1) * math.radians(self.degrees)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # reading: inverse zoom
        row0 = torch.stack([cos, -sin, tx], dim=1)
        row1 = torch.stack([sin, cos, ty], dim=1)
        return torch.stack([row0, row1], dim=1)


def apply_affine(images: Tensor, theta: Tensor) -> Tensor:
    """Resample ``images`` ``(n, C, H, W)`` through pixel-unit affine maps ``theta`` ``(n, 2, 3)``.

    ``grid_sample`` works in normalised coordinates ([-1, 1] across each axis); the map is
    conjugated by the pixel-to-normalised scaling so that rotations stay rotations on
    non-square images and translations stay in pixels.
    """
    _, _, h, w = images.shape
    theta = theta.to(torch.float64)
    to_norm = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64)  # pixels -> normalised
    linear = theta[:, :, :2] * to_norm[None, :, None] / to_norm[None, None, :]
    shift = theta[:, :, 2] * to_norm[None, :]
    norm_theta = torch.cat([linear, shift[:, :, None]], dim=2)
    norm_theta = norm_theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(norm_theta, list(images.shape), align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
