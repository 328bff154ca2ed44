"""ilastik-style pixel features, computed in 2-D on each slice, as the networks see slices.

For every scale sigma of `RandomForestParameters.scales` and every selected feature
(ilastik's definitions, channels ordered feature by feature, then scale by scale):

- gaussian: the image smoothed with a Gaussian of standard deviation sigma;
- laplacian_of_gaussian: d2/dy2 + d2/dx2 of the Gaussian-smoothed image;
- gradient_magnitude: |grad| of the Gaussian-smoothed image;
- difference_of_gaussians: Gaussian(sigma) - Gaussian(0.66 sigma);
- structure_tensor_eigenvalues: the tensor grad grad^T of the image smoothed at the
  inner scale sigma, averaged with a Gaussian of the outer scale 0.5 sigma; two channels,
  largest eigenvalue first;
- hessian_eigenvalues: of the Hessian of the Gaussian-smoothed image at sigma; two
  channels, largest first.

These are the scales ilastik's feature selection hands to vigra (DoG sigma and
0.66 sigma, structure tensor inner sigma and outer 0.5 sigma). As ilastik's
presmoothing operator does, Gaussian derivatives at sigma > 1 are taken at sigma = 1 of
the image presmoothed by sqrt(sigma^2 - 1): the same Gaussian up to sampling (~1e-4 of
the intensity range) for ~3x fewer multiplications at sigma = 10. ilastik also takes
the DoG pair and the tensor's outer scale at sigma = 1 of that presmoothed image, which
shrinks them to G(sigma) - G(sqrt(sigma^2 - 0.56)) and 0.5 pixels; here they keep their
nominal scales, so the large-scale DoG remains a band-pass rather than nearly zero.

Kernels follow vigra's, as ilastik uses them: sampled Gaussians reaching 3.5 sigma
(radius at least one pixel); derivative kernels of even order have their mean removed,
and a kernel of order n returns exactly 1 on x^n / n!, so a constant image has zero
derivatives and small scales give finite differences rather than biased ones. Images are
extended by mirroring without repeating the edge pixel (scipy's "mirror", vigra's
"reflect").

The numpy back end filters along x with scipy.ndimage and along y with numpy sums of
shifted rows, on worker threads, slice by slice; the torch back end runs `conv2d` on a
batch of slices on any torch device. Both apply the same kernels in the same order, so
they agree to float32 rounding.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from segmentation.models import RandomForestParameters

WINDOW_SIGMAS = 3.5  # ilastik's filter window, in standard deviations
DOG_RATIO = 0.66  # ilastik: the second Gaussian of the difference
OUTER_SCALE_RATIO = 0.5  # ilastik: structure-tensor averaging scale over its inner scale
PRESMOOTH_ABOVE = 1.0  # ilastik: derivatives at larger scales are taken at this scale after presmoothing
NUMPY_DEVICE = "numpy"

_CHANNELS: dict[str, tuple[str, ...]] = {
    "gaussian": ("",),
    "laplacian_of_gaussian": ("",),
    "gradient_magnitude": ("",),
    "difference_of_gaussians": ("",),
    "structure_tensor_eigenvalues": (" largest", " smallest"),
    "hessian_eigenvalues": (" largest", " smallest"),
}

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def filter_reach(parameters: RandomForestParameters) -> int:
    """How far, in pixels, a feature's value reaches into the image: a tile with this margin computes its middle exactly.

    The widest chain of kernels is at the largest scale: presmoothing, the derivative at
    sigma 1, and the structure tensor's outer average.
    """
    largest = max(parameters.scales)
    presmoothing = math.sqrt(max(largest**2 - PRESMOOTH_ABOVE**2, 0.0))
    chain = [presmoothing, min(largest, PRESMOOTH_ABOVE), OUTER_SCALE_RATIO * largest]
    return sum(_kernel_radius(sigma) for sigma in chain if sigma > 0)


def _kernel_radius(sigma: float) -> int:
    return max(1, int(WINDOW_SIGMAS * sigma + 0.5))


def feature_names(parameters: RandomForestParameters) -> list[str]:
    """One name per output channel, in the order of the last axis of `compute_features`."""
    return [
        f"{feature} sigma={scale:g}{channel}"
        for feature in parameters.features
        for scale in parameters.scales
        for channel in _CHANNELS[feature]
    ]


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when torch sees one; on CPU the scipy back end is the faster one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else NUMPY_DEVICE
    return device


def forest_device(device: torch.device) -> str:
    """The back end for a job on `device`: torch on a GPU; on a CPU node scipy, which is the faster one."""
    return str(device) if device.type == "cuda" else NUMPY_DEVICE


def compute_features(
    slices: NDArray[np.floating],
    parameters: RandomForestParameters,
    device: str = "auto",
    out: NDArray[np.float32] | None = None,
    channels: Sequence[int] | None = None,
) -> NDArray[np.float32]:
    """Features of each (y, x) slice of an (n, y, x) stack, as (n, y, x, n_features) float32.

    `device` is "numpy" for scipy, a torch device ("cpu", "cuda", "cuda:1") for torch,
    or "auto". `channels`, increasing indices into `feature_names`, computes those
    alone, in that order: a filter no channel needs is never run. Memory grows with n:
    callers stream large volumes in blocks of slices, and can pass the same
    C-contiguous `out` for every block, which spares the page faults of touching fresh
    memory (a third of the time at 512^2 on a virtual machine).
    """
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim != 3:
        raise ValueError(f"slices must be shaped (n, y, x), got {slices.shape}")
    count = len(feature_names(parameters))
    wanted = list(range(count)) if channels is None else list(channels)
    if not wanted or wanted != sorted(set(wanted)) or wanted[0] < 0 or wanted[-1] >= count:
        raise ValueError(f"channels must be increasing indices in 0..{count - 1}, got {channels}")
    position = {channel: index for index, channel in enumerate(wanted)}
    shape = (*slices.shape, len(wanted))
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    device = resolve_device(device)
    if device == NUMPY_DEVICE:
        _numpy_features(slices, parameters, out, position)
    else:
        _torch_features(slices, parameters, torch.device(device), out, position)
    return out


def gaussian_kernel(sigma: float, order: int) -> NDArray[np.float32]:
    """Correlation kernel of the order-th derivative of a Gaussian, normalised as vigra does."""
    return _gaussian_kernel(float(sigma), order)


@lru_cache(maxsize=128)
def _gaussian_kernel(sigma: float, order: int) -> NDArray[np.float32]:
    radius = _kernel_radius(sigma)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    gaussian = np.exp(-0.5 * (offsets / sigma) ** 2)
    gaussian /= gaussian.sum()
    if order == 0:
        kernel = gaussian
    elif order == 1:
        # Correlating with g'(-x) = x g(x) / sigma^2 differentiates the smoothed image.
        kernel = offsets / sigma**2 * gaussian
        kernel /= np.sum(offsets * kernel)
    elif order == 2:
        kernel = (offsets**2 / sigma**4 - 1 / sigma**2) * gaussian
        kernel -= kernel.mean()
        kernel /= np.sum(offsets**2 / 2 * kernel)
    else:
        raise ValueError(f"derivative order must be 0, 1 or 2, got {order}")
    kernel = kernel.astype(np.float32)
    kernel.flags.writeable = False  # shared through the cache
    return kernel


Correlate = Callable[[Array, NDArray[np.float32], int], Array]


def _channels(
    image: Array, parameters: RandomForestParameters, correlate: Correlate, needed: Collection[int]
) -> Iterator[tuple[int, Array]]:
    """(index in `feature_names`, channel) for every `needed` feature of `image` (..., y, x), by either back end.

    Works one scale at a time so that only that scale's derivative images are held;
    smoothing along y is shared by the derivatives along x that follow it. A feature
    none of whose channels is needed is not computed, nor a scale none of whose are.
    """
    channel_counts = [len(_CHANNELS[feature]) for feature in parameters.features]
    feature_offsets = np.cumsum([0, *channel_counts])[:-1] * len(parameters.scales)
    for scale_index, sigma in enumerate(parameters.scales):
        firsts = [int(offset) + scale_index * count for offset, count in zip(feature_offsets, channel_counts)]
        wanted = [
            (feature, first)
            for feature, first, count in zip(parameters.features, firsts, channel_counts)
            if any(channel in needed for channel in range(first, first + count))
        ]
        if not wanted:
            continue
        features_at = _features_at_scale(image, sigma, correlate)
        for feature, first in wanted:
            for index, channel in enumerate(features_at(feature), start=first):
                if index in needed:
                    yield index, channel


def _features_at_scale(
    image: Array, sigma: float, correlate: Correlate
) -> Callable[[str], tuple[Array, ...]]:
    def smooth(array: Array, scale: float) -> Array:
        along = correlate(array, gaussian_kernel(scale, 0), -2)
        return correlate(along, gaussian_kernel(scale, 0), -1)

    derivative_scale = min(sigma, PRESMOOTH_ABOVE)
    presmoothed = image
    if sigma > PRESMOOTH_ABOVE:
        presmoothed = smooth(image, math.sqrt(sigma**2 - PRESMOOTH_ABOVE**2))

    @cache
    def along_y(order: int) -> Array:
        return correlate(presmoothed, gaussian_kernel(derivative_scale, order), -2)

    @cache
    def derivative(order_y: int, order_x: int) -> Array:
        return correlate(along_y(order_y), gaussian_kernel(derivative_scale, order_x), -1)

    def features_at(feature: str) -> tuple[Array, ...]:
        if feature == "gaussian":
            return (derivative(0, 0),)
        if feature == "laplacian_of_gaussian":
            return (derivative(2, 0) + derivative(0, 2),)
        if feature == "gradient_magnitude":
            d_y, d_x = derivative(1, 0), derivative(0, 1)
            return ((d_y * d_y + d_x * d_x) ** 0.5,)
        if feature == "difference_of_gaussians":
            return (derivative(0, 0) - smooth(image, DOG_RATIO * sigma),)
        if feature == "structure_tensor_eigenvalues":
            d_y, d_x = derivative(1, 0), derivative(0, 1)
            outer = OUTER_SCALE_RATIO * sigma
            return _symmetric_eigenvalues(
                smooth(d_y * d_y, outer), smooth(d_y * d_x, outer), smooth(d_x * d_x, outer)
            )
        if feature == "hessian_eigenvalues":
            return _symmetric_eigenvalues(derivative(2, 0), derivative(1, 1), derivative(0, 2))
        raise ValueError(f"unknown feature {feature!r}")

    return features_at


def _symmetric_eigenvalues(a: Array, b: Array, c: Array) -> tuple[Array, Array]:
    """Eigenvalues of [[a, b], [b, c]] at every pixel, largest first (as vigra sorts them)."""
    mean = (a + c) * 0.5
    half_difference = (a - c) * 0.5
    radius = (half_difference * half_difference + b * b) ** 0.5
    return mean + radius, mean - radius


def worker_count() -> int:
    """Cores this process may run on, which can be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _numpy_features(
    slices: NDArray[np.float32], parameters: RandomForestParameters, out: NDArray[np.float32], position: dict[int, int]
) -> None:
    def correlate(array: np.ndarray, kernel: NDArray[np.float32], axis: int) -> np.ndarray:
        if axis == -2:
            return _correlate_columns(array, kernel)
        return ndimage.correlate1d(array, kernel, axis=axis, mode="mirror", output=np.float32)

    def fill(indices: range) -> None:
        # Gathering channels plane by plane and transposing once is ~15x faster than
        # writing each channel into the pixel-major output with a stride; each worker
        # keeps one plane buffer, as fresh memory costs page faults.
        planes = np.empty((out.shape[-1], *slices.shape[1:]), np.float32)
        for index in indices:
            for channel_index, channel in _channels(slices[index], parameters, correlate, position):
                planes[position[channel_index]] = channel
            out[index] = np.moveaxis(planes, 0, -1)

    # scipy.ndimage and numpy release the GIL on whole arrays, so threads use every core.
    workers = max(1, min(worker_count(), len(slices)))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fill, [range(first, len(slices), workers) for first in range(workers)]))


def _correlate_columns(image: NDArray[np.float32], kernel: NDArray[np.float32]) -> NDArray[np.float32]:
    """Correlate along y as sums of whole shifted rows, pairing the taps of a kernel.

    Gaussian kernels are symmetric (even orders) or antisymmetric (odd), so one multiply
    serves two taps. scipy filters one strided column at a time, which takes up to 5x
    longer for short kernels; along x it is as fast as this, so it keeps that axis.
    """
    radius = len(kernel) // 2
    height = image.shape[-2]
    padded = np.take(image, _mirror_indices(height, radius), axis=-2)
    symmetric = kernel[radius + 1] == kernel[radius - 1]
    result = padded[..., radius : radius + height, :] * kernel[radius]
    pair = np.empty_like(result)
    for offset in range(1, radius + 1):
        below = padded[..., radius + offset : radius + offset + height, :]
        above = padded[..., radius - offset : radius - offset + height, :]
        if symmetric:
            np.add(below, above, out=pair)
        else:
            np.subtract(below, above, out=pair)
        pair *= kernel[radius + offset]
        result += pair
    return result


def _mirror_indices(length: int, radius: int) -> NDArray[np.int64]:
    """Source index of each position of a line padded by `radius`, mirrored like scipy's 'mirror'."""
    positions = np.arange(-radius, length + radius)
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)
    folded = np.mod(positions, period)
    return np.where(folded >= length, period - folded, folded)


def _torch_features(
    slices: NDArray[np.float32],
    parameters: RandomForestParameters,
    device: torch.device,
    out: NDArray[np.float32],
    position: dict[int, int],
) -> None:
    def correlate(array: torch.Tensor, kernel: NDArray[np.float32], axis: int) -> torch.Tensor:
        radius = len(kernel) // 2
        length = array.shape[axis]
        indices = torch.from_numpy(_mirror_indices(length, radius)).to(device)
        padded = array.index_select(axis, indices).unsqueeze(1)
        weight = torch.tensor(kernel, device=device)
        weight = weight.view(1, 1, -1, 1) if axis == -2 else weight.view(1, 1, 1, -1)
        return torch.nn.functional.conv2d(padded, weight).squeeze(1)

    with torch.inference_mode(), _exact_float32(device):
        image = torch.from_numpy(slices).to(device)
        features = torch.empty(out.shape, dtype=torch.float32, device=device)
        for channel_index, channel in _channels(image, parameters, correlate, position):
            features[..., position[channel_index]] = channel
        torch.from_numpy(out).copy_(features)


def _exact_float32(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Keep cuDNN off TF32, whose 10-bit mantissa would part the back ends by ~1e-3."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(
        enabled=torch.backends.cudnn.enabled,
        benchmark=torch.backends.cudnn.benchmark,
        deterministic=torch.backends.cudnn.deterministic,
        allow_tf32=False,
    )

