"""Image parameterisations for feature visualisation: a decorrelated Fourier spectrum or pixels.

Activation maximisation in plain pixels finds high-frequency patterns that drive a unit but
look like noise. Olah et al. (2017, "Feature Visualization", Distill) precondition the search
instead: the free parameters are the image's 2-D Fourier coefficients, each scaled by
``1 / frequency`` so that a gradient step changes every frequency by about the same amount of
*energy* a natural image has there (natural images have a ``1/f`` spectrum); for RGB images the
three channels are mixed by the square root of ImageNet's colour correlation, so the parameters
are decorrelated colour components. A sigmoid maps the result into [0, 1] display space.

This follows lucid's ``fft_image`` / ``to_valid_rgb`` (and torch-lucent's port of it): the
spectrum is initialised with standard deviation 0.01, transformed back with an orthonormal
``irfft2`` and divided by lucid's constant 4. A one-channel image (the 8x8 digits) has no colour
matrix.

Examples
--------
>>> import torch
>>> param = ImageParam([7, 8], (1, 8, 8))
>>> image = param()
>>> tuple(image.shape), bool(image.min() > 0), bool(image.max() < 1)
((2, 1, 8, 8), True, True)
>>> torch.equal(image, ImageParam([7, 8], (1, 8, 8))())  # the seeds fix the start
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ImageParam", "fft_scale", "COLOR_CORRELATION_SVD_SQRT"]

#: square root of ImageNet's RGB colour correlation (lucid's ``color_correlation_svd_sqrt``)
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
)
#: lucid's constant: the spectrum's image is divided by it (less saturation at the start)
_MAGIC = 4.0


def fft_scale(height: int, width: int, decay_power: float = 1.0) -> Tensor:
    """``1 / max(f, 1 / max(h, w)) ** decay_power`` on the ``rfft2`` frequency grid ``(h, w//2+1)``.

    The floor keeps the constant (zero-frequency) term finite: it gets the weight of the lowest
    frequency the image can hold.

    Examples
    --------
    >>> s = fft_scale(8, 8)
    >>> tuple(s.shape), float(s[0, 0]), float(s[0, 1])
    ((8, 5), 8.0, 8.0)
    """
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return (1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power).float()


class ImageParam:
    """A batch of images with one free parameter tensor: a scaled spectrum, or plain pixels.

    Parameters
    ----------
    seeds : sequence of int
        One seed per image: image ``i`` starts from a draw of ``torch.Generator`` seeded with
        ``seeds[i]``, so an image does not depend on the other images of the batch.
    shape : (C, H, W)
        Image shape.
    decorrelate : bool, default True
        Fourier parameterisation with ``1/f`` scaling, and colour decorrelation when ``C == 3``.
        ``False``: one free logit per pixel (the un-preconditioned baseline).
    sd : float, default 0.01
        Standard deviation of the random start.
    device : torch.device, optional
        Where the parameters live (drawn on the CPU, so a seed gives the same start anywhere).

    Calling the object returns the images ``(n, C, H, W)`` in (0, 1); :attr:`params` are what an
    optimiser updates.
    """

    def __init__(
        self, seeds: Sequence[int], shape: tuple[int, int, int], *, decorrelate: bool = True,
        sd: float = 0.01, device: torch.device | str | None = None,
    ) -> None:  # fmt: skip
        c, h, w = shape
        self.shape = (c, h, w)
        self.decorrelate = decorrelate
        raw_shape = (c, h, w // 2 + 1, 2) if decorrelate else (c, h, w)
        draws = [
            torch.randn(raw_shape, generator=torch.Generator().manual_seed(int(s))) * sd
            for s in seeds
        ]
        self.raw = torch.stack(draws).to(device).requires_grad_(True)
        self.scale = fft_scale(h, w)[None, None, :, :, None].to(device)
        self.color = COLOR_CORRELATION_SVD_SQRT.to(device)
        # lucid normalises the matrix by its largest column norm, keeping values in range
        self.color = self.color / self.color.norm(dim=0).max()

    @property
    def params(self) -> list[Tensor]:
        """The free parameters (one leaf tensor)."""
        return [self.raw]

    def logits(self) -> Tensor:
        """The images before the sigmoid, ``(n, C, H, W)``."""
        if not self.decorrelate:
            return self.raw
        _, h, w = self.shape
        spectrum = torch.view_as_complex((self.scale * self.raw).contiguous())
        image = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") / _MAGIC
        if self.shape[0] == 3:
            # decorrelated components -> RGB: every pixel's 3-vector times the matrix's transpose
            image = torch.einsum("nchw,dc->ndhw", image, self.color)
        return image

    def __call__(self) -> Tensor:
        return torch.sigmoid(self.logits())
