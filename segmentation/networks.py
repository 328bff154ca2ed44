"""MSDNet, TUNet and TUNet3+ in plain PyTorch, built from the DLSIA-style parameter models.

These re-implement the DLSIA family rather than import it, so the job image needs only
torch. Parameter names and their meaning follow DLSIA: a U-Net's `depth` counts its
resolution levels, so `depth` = 4 downsamples three times.

Every network is fully convolutional and pads its input internally (replicating the
edge) to a multiple of its downsampling factor, then crops the output back, so training
patches and whole slices of any size go through the same module.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from segmentation.models import (
    MSDNetParameters,
    NetworkParameters,
    TUNet3PlusParameters,
    TUNetParameters,
)

MAX_GROUPS = 32  # Wu & He's choice for GroupNorm
MIN_CHANNELS_PER_GROUP = 4  # below this a group is nearly instance norm, noisy on small patches

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "ReLU": nn.ReLU,
    "LeakyReLU": nn.LeakyReLU,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
}


def build_network(
    parameters: NetworkParameters, *, in_channels: int = 1, num_classes: int
) -> nn.Module:
    """The untrained network that `parameters` describe, mapping (n, in_channels, y, x) to class logits."""
    if not isinstance(parameters, NetworkParameters):
        raise TypeError(f"no network for {type(parameters).__name__}")
    automatic = [name for name in ("base_channels", "carryover_channels") if getattr(parameters, name, 0) is None]
    if automatic:
        raise ValueError(f"{' and '.join(automatic)} automatic: set for a device first with parameters.for_device")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"need at least one input channel and class, got {in_channels} and {num_classes}")
    layers = _LayerFactory(parameters.activation, parameters.normalization, parameters.dropout)
    if isinstance(parameters, TUNet3PlusParameters):
        return TUNet3Plus(
            in_channels,
            num_classes,
            level_channels(parameters),
            parameters.hidden_rate,
            parameters.carryover_channels,
            layers,
        )
    if isinstance(parameters, TUNetParameters):
        return TUNet(in_channels, num_classes, level_channels(parameters), parameters.hidden_rate, layers)
    if isinstance(parameters, MSDNetParameters):
        return MSDNet(in_channels, num_classes, msdnet_dilations(parameters), layers)
    raise TypeError(f"no network for {type(parameters).__name__}")


def level_channels(parameters: TUNetParameters) -> list[int]:
    """Feature channels at each resolution level, growing by `growth_rate` per level."""
    return [
        max(1, round(parameters.base_channels * parameters.growth_rate**level))
        for level in range(parameters.depth)
    ]


def msdnet_dilations(parameters: MSDNetParameters) -> list[list[int]]:
    """Dilation of every channel of every layer, cycling through the choices as DLSIA does."""
    if parameters.custom_dilation:
        choices = parameters.dilation_array
    else:
        choices = list(range(1, parameters.max_dilation + 1))
    width = parameters.layer_width
    return [
        [choices[(layer * width + channel) % len(choices)] for channel in range(width)]
        for layer in range(parameters.num_layers)
    ]


def group_count(channels: int) -> int:
    """The most groups up to MAX_GROUPS that divide `channels` and keep a few channels in each."""
    target = max(1, min(MAX_GROUPS, channels // MIN_CHANNELS_PER_GROUP))
    return next(groups for groups in range(target, 0, -1) if channels % groups == 0)


def mixed_precision(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA, where it halves memory and time; CPU keeps float32 for reproducibility."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


class _LayerFactory:
    """Makes the activation, normalisation and dropout layers that the parameters select."""

    def __init__(self, activation: str, normalization: str, dropout: float) -> None:
        self.activation_name = activation
        self.normalization_name = normalization
        self.dropout_rate = dropout

    def activation(self) -> nn.Module:
        return _ACTIVATIONS[self.activation_name]()

    def normalization(self, channels: int) -> nn.Module:
        if self.normalization_name == "BatchNorm2d":
            return nn.BatchNorm2d(channels)
        if self.normalization_name == "InstanceNorm2d":
            return nn.InstanceNorm2d(channels, affine=True)
        if self.normalization_name == "GroupNorm":
            return nn.GroupNorm(group_count(channels), channels)
        return nn.Identity()

    def dropout(self, spatial: bool) -> nn.Module:
        """Dropout2d drops whole feature maps, which regularises wide U-Net blocks better."""
        if self.dropout_rate == 0:
            return nn.Identity()
        return nn.Dropout2d(self.dropout_rate) if spatial else nn.Dropout(self.dropout_rate)

    def convolution_block(
        self, in_channels: int, out_channels: int, dilation: int = 1
    ) -> nn.Sequential:
        """3x3 convolution, normalisation, activation: the unit every network is made of."""
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
            self.normalization(out_channels),
            self.activation(),
        )

    def double_convolution(self, in_channels: int, out_channels: int, hidden_rate: float) -> nn.Sequential:
        hidden_channels = max(1, round(out_channels * hidden_rate))
        return nn.Sequential(
            self.convolution_block(in_channels, hidden_channels),
            self.convolution_block(hidden_channels, out_channels),
            self.dropout(spatial=True),
        )


class FullyConvolutional(nn.Module):
    """Pads the input to a multiple of `size_multiple` and crops the output back."""

    size_multiple: int = 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_y = -height % self.size_multiple
        pad_x = -width % self.size_multiple
        if pad_y or pad_x:
            images = F.pad(images, (0, pad_x, 0, pad_y), mode="replicate")
        return self.forward_padded(images)[..., :height, :width]

    def forward_padded(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MSDNet(FullyConvolutional):
    """Mixed-scale dense network (Pelt & Sethian, PNAS 2018).

    Each layer adds `len(dilations[layer])` feature maps, each computed by a dilated 3x3
    convolution of the input and of all earlier maps; a 1x1 convolution of all maps gives
    the logits. Without downsampling, it keeps full resolution with few parameters.
    """

    def __init__(
        self, in_channels: int, num_classes: int, dilations: list[list[int]], layers: _LayerFactory
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        channels = in_channels
        for layer_dilations in dilations:
            self.layers.append(_MixedScaleLayer(channels, layer_dilations, layers))
            channels += len(layer_dilations)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward_padded(self, images: torch.Tensor) -> torch.Tensor:
        features = images
        for layer in self.layers:
            features = torch.cat([features, layer(features)], dim=1)
        return self.classifier(features)


class _MixedScaleLayer(nn.Module):
    def __init__(self, in_channels: int, dilations: list[int], layers: _LayerFactory) -> None:
        super().__init__()
        self.convolutions = nn.ModuleList(
            nn.Conv2d(in_channels, 1, 3, padding=dilation, dilation=dilation) for dilation in dilations
        )
        self.normalization = layers.normalization(len(dilations))
        self.activation = layers.activation()
        self.dropout = layers.dropout(spatial=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        new_maps = torch.cat([convolution(features) for convolution in self.convolutions], dim=1)
        return self.dropout(self.activation(self.normalization(new_maps)))


class TUNet(FullyConvolutional):
    """U-Net with tunable depth and widths: max-pooling down, transposed convolutions up.

    `channels[level]` are the feature channels at each resolution level; the decoder
    concatenates each upsampled map with the encoder's map of the same level.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: list[int],
        hidden_rate: float,
        layers: _LayerFactory,
    ) -> None:
        super().__init__()
        self.size_multiple = 2 ** (len(channels) - 1)
        self.encoders = _encoder_blocks(in_channels, channels, hidden_rate, layers)
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2)
            for level in range(len(channels) - 1)
        )
        self.decoders = nn.ModuleList(
            layers.double_convolution(2 * channels[level], channels[level], hidden_rate)
            for level in range(len(channels) - 1)
        )
        self.classifier = nn.Conv2d(channels[0], num_classes, 1)

    def forward_padded(self, images: torch.Tensor) -> torch.Tensor:
        encoded = _encode(images, self.encoders, self.pool)
        features = encoded[-1]
        for level in reversed(range(len(self.decoders))):
            upsampled = self.upsamplers[level](features)
            features = self.decoders[level](torch.cat([encoded[level], upsampled], dim=1))
        return self.classifier(features)


class TUNet3Plus(FullyConvolutional):
    """UNet3+ (Huang et al., ICASSP 2020): every decoder level sees every scale.

    The decoder at level i takes the encoder maps of levels <= i (max-pooled down to its
    resolution) and the deeper decoder maps and bottom encoder map (bilinearly upsampled),
    reduces each to `carryover_channels` with a 3x3 convolution, concatenates them and
    fuses them with another 3x3 convolution.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: list[int],
        hidden_rate: float,
        carryover_channels: int,
        layers: _LayerFactory,
    ) -> None:
        super().__init__()
        depth = len(channels)
        self.size_multiple = 2 ** (depth - 1)
        self.encoders = _encoder_blocks(in_channels, channels, hidden_rate, layers)
        self.pool = nn.MaxPool2d(2)
        fused_channels = carryover_channels * depth
        # carryovers[i][j] brings level j's map to decoder level i.
        self.carryovers = nn.ModuleList()
        self.fusions = nn.ModuleList()
        for level in range(depth - 1):
            carryover = nn.ModuleList()
            for source in range(depth):
                if source <= level or source == depth - 1:
                    source_channels = channels[source]
                else:
                    source_channels = fused_channels
                carryover.append(
                    nn.Sequential(
                        _resampler(level, source),
                        layers.convolution_block(source_channels, carryover_channels),
                    )
                )
            self.carryovers.append(carryover)
            self.fusions.append(
                nn.Sequential(
                    layers.convolution_block(fused_channels, fused_channels),
                    layers.dropout(spatial=True),
                )
            )
        self.classifier = nn.Conv2d(fused_channels if depth > 1 else channels[0], num_classes, 1)

    def forward_padded(self, images: torch.Tensor) -> torch.Tensor:
        encoded = _encode(images, self.encoders, self.pool)
        depth = len(encoded)
        decoded: dict[int, torch.Tensor] = {depth - 1: encoded[-1]}
        for level in reversed(range(depth - 1)):
            sources = [encoded[source] if source <= level else decoded[source] for source in range(depth)]
            carried = [carry(source) for carry, source in zip(self.carryovers[level], sources)]
            decoded[level] = self.fusions[level](torch.cat(carried, dim=1))
        return self.classifier(decoded[0])


def _encoder_blocks(
    in_channels: int, channels: list[int], hidden_rate: float, layers: _LayerFactory
) -> nn.ModuleList:
    inputs = [in_channels, *channels[:-1]]
    return nn.ModuleList(
        layers.double_convolution(level_in, level_out, hidden_rate)
        for level_in, level_out in zip(inputs, channels)
    )


def _encode(images: torch.Tensor, encoders: nn.ModuleList, pool: nn.Module) -> list[torch.Tensor]:
    """The encoder's output at each level, finest first."""
    encoded = [encoders[0](images)]
    for encoder in encoders[1:]:
        encoded.append(encoder(pool(encoded[-1])))
    return encoded


def _resampler(level: int, source: int) -> nn.Module:
    if source < level:
        factor = 2 ** (level - source)
        return nn.MaxPool2d(factor, stride=factor)
    if source > level:
        return nn.Upsample(scale_factor=2 ** (source - level), mode="bilinear", align_corners=False)
    return nn.Identity()


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
