"""The networks: any input size, what each hyperparameter changes, saving and loading."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from segmentation.held_out import HeldOutScore
from segmentation.models import (
    MSDNetParameters,
    NetworkParameters,
    RandomForestParameters,
    TUNet3PlusParameters,
    TUNetParameters,
)
from segmentation.networks import (
    MSDNet,
    TUNet,
    TUNet3Plus,
    build_network,
    group_count,
    msdnet_dilations,
    parameter_count,
)
from segmentation.training import TrainedNetwork

SMALL_NETWORKS: dict[str, NetworkParameters] = {
    "MSDNet": MSDNetParameters(num_layers=4, layer_width=2, max_dilation=3),
    "TUNet": TUNetParameters(depth=3, base_channels=4),
    "TUNet3+": TUNet3PlusParameters(depth=3, base_channels=4, carryover_channels=3),
}


def built(parameters: NetworkParameters, num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return build_network(parameters, in_channels=in_channels, num_classes=num_classes).eval()


@pytest.mark.parametrize("name", SMALL_NETWORKS)
@pytest.mark.parametrize("height, width", [(37, 53), (16, 16), (5, 129), (1, 1)])
def test_every_network_returns_logits_of_the_input_size(name: str, height: int, width: int) -> None:
    network = built(SMALL_NETWORKS[name], num_classes=4, in_channels=2)
    with torch.inference_mode():
        logits = network(torch.rand(2, 2, height, width))
    assert logits.shape == (2, 4, height, width)
    assert torch.isfinite(logits).all()


def test_build_network_picks_the_class_the_parameters_name() -> None:
    assert type(built(SMALL_NETWORKS["MSDNet"])) is MSDNet
    assert type(built(SMALL_NETWORKS["TUNet"])) is TUNet
    assert type(built(SMALL_NETWORKS["TUNet3+"])) is TUNet3Plus
    with pytest.raises(TypeError):
        build_network(RandomForestParameters(), num_classes=3)  # type: ignore[arg-type]


def smallest_feature_map(network: nn.Module, size: int) -> int:
    """The smallest spatial edge any layer produces: how far the network downsamples."""
    edges: list[int] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, output: edges.append(output.shape[-1]))
        for module in network.modules()
        if isinstance(module, nn.Conv2d)
    ]
    with torch.inference_mode():
        network(torch.rand(1, 1, size, size))
    for hook in hooks:
        hook.remove()
    return min(edges)


@pytest.mark.parametrize("name", ["TUNet", "TUNet3+"])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_depth_counts_resolution_levels_as_in_dlsia(name: str, depth: int) -> None:
    network = built(SMALL_NETWORKS[name].model_copy(update={"depth": depth}))
    assert smallest_feature_map(network, 64) == 64 // 2 ** (depth - 1)
    assert network.size_multiple == 2 ** (depth - 1)


def test_msdnet_keeps_full_resolution_and_sees_every_earlier_map() -> None:
    parameters = MSDNetParameters(num_layers=5, layer_width=3, max_dilation=4)
    network = built(parameters)
    assert smallest_feature_map(network, 40) == 40
    # The classifier reads the input and every map of every layer.
    assert network.classifier.in_channels == 1 + 5 * 3
    assert [layer.convolutions[0].in_channels for layer in network.layers] == [1, 4, 7, 10, 13]


def test_msdnet_dilations_cycle_or_follow_the_custom_array() -> None:
    cycling = MSDNetParameters(num_layers=3, layer_width=2, max_dilation=3)
    assert msdnet_dilations(cycling) == [[1, 2], [3, 1], [2, 3]]
    custom = MSDNetParameters(num_layers=4, layer_width=1, custom_dilation=True, dilation_array=[2, 7])
    assert msdnet_dilations(custom) == [[2], [7], [2], [7]]
    network = built(custom)
    assert [layer.convolutions[0].dilation for layer in network.layers] == [(2, 2), (7, 7), (2, 2), (7, 7)]


def encoder_widths(network: TUNet) -> list[tuple[int, int]]:
    """(hidden, output) channels of each encoder block's two convolutions."""
    widths = []
    for block in network.encoders:
        convolutions = [module for module in block.modules() if isinstance(module, nn.Conv2d)]
        widths.append((convolutions[0].out_channels, convolutions[1].out_channels))
    return widths


def test_channel_parameters_set_the_widths_of_each_level() -> None:
    plain = built(TUNetParameters(depth=3, base_channels=6, growth_rate=2.0))
    assert encoder_widths(plain) == [(6, 6), (12, 12), (24, 24)]
    slow_growth = built(TUNetParameters(depth=3, base_channels=6, growth_rate=1.5))
    assert encoder_widths(slow_growth) == [(6, 6), (9, 9), (14, 14)]
    wide_hidden = built(TUNetParameters(depth=3, base_channels=6, hidden_rate=2.0))
    assert encoder_widths(wide_hidden) == [(12, 6), (24, 12), (48, 24)]
    assert parameter_count(wide_hidden) > parameter_count(plain)


def test_carryover_channels_set_the_width_of_every_decoder_level() -> None:
    network = built(TUNet3PlusParameters(depth=4, base_channels=4, carryover_channels=5))
    assert network.classifier.in_channels == 4 * 5
    for fusion in network.fusions:
        assert fusion[0][0].in_channels == fusion[0][0].out_channels == 20


def test_empty_width_fields_are_set_for_the_device_before_a_network_is_built() -> None:
    automatic = TUNet3PlusParameters(depth=3)
    with pytest.raises(ValueError, match="base_channels and carryover_channels automatic"):
        build_network(automatic, num_classes=2)
    on_cpu, on_gpu = automatic.for_device("cpu"), automatic.for_device("cuda")
    assert (on_cpu.base_channels, on_cpu.carryover_channels) == (16, 8)
    assert (on_gpu.base_channels, on_gpu.carryover_channels) == (32, 32)  # DLSIA's
    assert TUNet3PlusParameters(carryover_channels=5).for_device("cuda").carryover_channels == 5
    assert built(on_cpu, num_classes=2).classifier.in_channels == 3 * 8


@pytest.mark.parametrize(
    "normalization, layer_type",
    [
        ("BatchNorm2d", nn.BatchNorm2d),
        ("InstanceNorm2d", nn.InstanceNorm2d),
        ("GroupNorm", nn.GroupNorm),
    ],
)
@pytest.mark.parametrize("name", SMALL_NETWORKS)
def test_normalization_and_activation_follow_the_parameters(
    name: str, normalization: str, layer_type: type[nn.Module]
) -> None:
    parameters = SMALL_NETWORKS[name].model_copy(
        update={"normalization": normalization, "activation": "SiLU"}
    )
    modules = list(built(parameters).modules())
    assert any(isinstance(module, layer_type) for module in modules)
    assert any(isinstance(module, nn.SiLU) for module in modules)
    assert not any(isinstance(module, nn.ReLU) for module in modules)


@pytest.mark.parametrize("name", SMALL_NETWORKS)
def test_no_normalization_leaves_no_normalization_layers(name: str) -> None:
    parameters = SMALL_NETWORKS[name].model_copy(update={"normalization": "none"})
    norm_types = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)
    assert not any(isinstance(module, norm_types) for module in built(parameters).modules())


@pytest.mark.parametrize(
    "channels, groups", [(1, 1), (3, 1), (7, 1), (8, 2), (12, 3), (32, 8), (36, 9), (512, 32)]
)
def test_group_count_divides_the_channels_and_keeps_groups_of_several(channels: int, groups: int) -> None:
    assert group_count(channels) == groups


def test_dropout_is_active_only_in_training() -> None:
    network = built(TUNetParameters(depth=2, base_channels=4, dropout=0.5))
    images = torch.rand(1, 1, 24, 24)
    with torch.inference_mode():
        assert torch.equal(network(images), network(images))
        network.train()
        assert not torch.equal(network(images), network(images))


@pytest.mark.parametrize("name", SMALL_NETWORKS)
def test_saved_network_loads_with_identical_outputs(name: str, tmp_path) -> None:
    parameters = SMALL_NETWORKS[name]
    module = built(parameters)
    # Move batch-norm statistics away from their initial values so that they must be saved too.
    module.train()
    with torch.no_grad():
        module(torch.rand(4, 1, 32, 32) * 3 + 1)
    module.eval()
    trained = TrainedNetwork(
        module=module,
        parameters=parameters,
        num_classes=3,
        normalization=(12.5, 4000.0),
        held_out=HeldOutScore(mean_iou=0.75, iou_per_class=[0.5, 1.0, None], pixels=40),
        history=[{"epoch": 1, "loss": 0.5, "val_score": 0.75, "val_loss": 0.4, "seconds": 1.0}],
    )
    path = tmp_path / "network.pt"
    trained.save(path)
    loaded = TrainedNetwork.load(path, device="cpu")

    images = torch.rand(2, 1, 45, 31)
    with torch.inference_mode():
        assert torch.equal(loaded.module(images), module(images))
    assert not loaded.module.training
    assert loaded.parameters == parameters and type(loaded.parameters) is type(parameters)
    assert (loaded.num_classes, loaded.normalization) == (3, (12.5, 4000.0))
    assert loaded.held_out == trained.held_out
    assert loaded.history == trained.history


def test_loading_rejects_files_that_are_not_network_files(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a network file"):
        TrainedNetwork.load(path)


@pytest.mark.parametrize(
    "parameters_class, values",
    [
        (TUNetParameters, {"depth": 0}),
        (TUNetParameters, {"base_channels": 0}),
        (TUNetParameters, {"growth_rate": 0}),
        (TUNetParameters, {"normalization": "LayerNorm"}),
        (TUNetParameters, {"activation": "Tanh"}),
        (TUNetParameters, {"dropout": 1.0}),
        (TUNetParameters, {"learning_rate": 0}),
        (TUNetParameters, {"patch_size": 8}),
        (TUNetParameters, {"unknown_setting": 1}),
        (TUNet3PlusParameters, {"carryover_channels": 0}),
        (MSDNetParameters, {"num_layers": 0}),
        (MSDNetParameters, {"custom_dilation": True, "dilation_array": [1, 0]}),
        (MSDNetParameters, {"custom_dilation": True, "dilation_array": []}),
    ],
)
def test_invalid_parameters_are_refused(parameters_class: type[NetworkParameters], values: dict) -> None:
    with pytest.raises(ValidationError):
        parameters_class(**values)

