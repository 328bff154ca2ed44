"""Model choices and their hyperparameters, with the names and defaults DLSIA users know.

The `name` field selects the model; the UI builds its form from these classes and the
job validates against them, so both agree on what is allowed.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

RandomForestFeature = Literal[
    "gaussian",
    "laplacian_of_gaussian",
    "gradient_magnitude",
    "difference_of_gaussians",
    "structure_tensor_eigenvalues",
    "hessian_eigenvalues",
]
RF_FEATURES: tuple[str, ...] = get_args(RandomForestFeature)
ILASTIK_SCALES = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
# ilastik's middle scales. Scribbles lie inside the phases, where the widest filters tell
# classes apart perfectly, so the forest leans on them; at the boundaries they blur
# across both phases and misplace the edge, while 0.3 is mostly noise. On every volume of
# the accuracy suite these four scored higher than all seven (mean IoU 0.894 against
# 0.863, docs/benchmarks.md), and they skip the costliest filter, sigma 10.
DEFAULT_SCALES = (0.7, 1.0, 1.6, 3.5)


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkParameters(_Parameters):
    """Training settings shared by the convolutional networks.

    A field left empty is automatic: the job sets it for the device it runs on
    (`for_device`), DLSIA's default on a GPU and a recipe that trains in about two
    minutes on a CPU, both measured by the accuracy suite (docs/benchmarks.md).
    """

    # field: (on a CPU, on a GPU)
    AUTOMATIC: ClassVar[dict[str, tuple[int, int]]] = {"num_epochs": (40, 30), "patches_per_epoch": (256, 512)}

    num_epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="Empty: 30 on a GPU (DLSIA's default), 40 on a CPU."
    )
    optimizer: Literal["Adam", "AdamW", "SGD"] = "Adam"
    criterion: Literal["CrossEntropyLoss"] = "CrossEntropyLoss"
    weights: list[float] | None = Field(
        default=None, description="Per-class loss weights; default: balanced from the labels."
    )
    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    activation: Literal["ReLU", "LeakyReLU", "GELU", "SiLU"] = "ReLU"
    normalization: Literal["BatchNorm2d", "InstanceNorm2d", "GroupNorm", "none"] = "BatchNorm2d"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    batch_size_train: int = Field(default=32, ge=1)
    batch_size_val: int = Field(default=32, ge=1)
    batch_size_inference: int = Field(default=8, ge=1, description="Whole slices per inference batch.")
    val_pct: float = Field(default=0.2, ge=0, lt=1)
    shuffle_train: bool = True
    patch_size: int = Field(default=64, ge=16, le=1024, description="Training patch edge in pixels.")
    patches_per_epoch: int | None = Field(default=None, ge=1, description="Empty: 512 on a GPU, 256 on a CPU.")
    early_stopping_patience: int = Field(
        default=10, ge=1, description="Epochs without validation improvement before stopping."
    )
    pseudo_labels: bool = Field(
        default=True,
        description="Also learn from a random forest's confident predictions, trained on the same scribbles.",
    )
    context_slices: int = Field(
        default=8, ge=0, le=64, description="Unlabelled slices, spread through the volume, that the pseudo-labels cover."
    )
    seed: int = 0

    def for_device(self, device_type: str) -> Self:
        """These parameters with every empty (automatic) field set for a GPU ("cuda") or a CPU (any other)."""
        on_gpu = device_type == "cuda"
        return self.model_copy(
            update={name: values[on_gpu] for name, values in self.AUTOMATIC.items() if getattr(self, name) is None}
        )


class MSDNetParameters(NetworkParameters):
    name: Literal["MSDNet"] = "MSDNet"
    layer_width: int = Field(default=1, ge=1, le=64)
    num_layers: int = Field(default=3, ge=1, le=500)
    custom_dilation: bool = False
    max_dilation: int = Field(default=5, ge=1, le=64)
    dilation_array: list[int] = Field(default_factory=lambda: [1, 2, 4])

    @model_validator(mode="after")
    def _dilations_positive(self) -> MSDNetParameters:
        if self.custom_dilation and (not self.dilation_array or min(self.dilation_array) < 1):
            raise ValueError("dilation_array must hold positive integers when custom_dilation is set")
        return self


class TUNetParameters(NetworkParameters):
    AUTOMATIC: ClassVar[dict[str, tuple[int, int]]] = {**NetworkParameters.AUTOMATIC, "base_channels": (16, 32)}

    name: Literal["TUNet"] = "TUNet"
    # Trained on scribbles, BatchNorm's batch statistics left whole regions mislabelled
    # (mean IoU about 0.75 against 0.93 with GroupNorm on the same phantom and labels).
    normalization: Literal["BatchNorm2d", "InstanceNorm2d", "GroupNorm", "none"] = "GroupNorm"
    depth: int = Field(default=4, ge=1, le=8)
    base_channels: int | None = Field(default=None, ge=1, le=512, description="Empty: 32 on a GPU (DLSIA's default), 16 on a CPU.")
    growth_rate: float = Field(default=2.0, gt=0, le=8)
    hidden_rate: float = Field(default=1.0, gt=0, le=8)


class TUNet3PlusParameters(TUNetParameters):
    # Every decoder level fuses depth x carryover_channels maps at its resolution, 128 at
    # full resolution with DLSIA's 32: on a CPU a 160³ case then trained for over half an
    # hour. 8 keeps it within the CPU recipe's time (docs/benchmarks.md).
    AUTOMATIC: ClassVar[dict[str, tuple[int, int]]] = {**TUNetParameters.AUTOMATIC, "carryover_channels": (8, 32)}

    name: Literal["TUNet3+"] = "TUNet3+"
    carryover_channels: int | None = Field(
        default=None, ge=1, le=512, description="Empty: 32 on a GPU (DLSIA's default), 8 on a CPU."
    )


class RandomForestParameters(_Parameters):
    name: Literal["RandomForest"] = "RandomForest"
    n_estimators: int = Field(default=50, ge=1, le=2000)
    max_depth: int | None = Field(default=8, ge=1)
    scales: list[float] = Field(default_factory=lambda: list(DEFAULT_SCALES))
    features: list[RandomForestFeature] = Field(default_factory=lambda: list(RF_FEATURES))
    max_training_pixels: int = Field(
        default=500_000, ge=100, description="Labelled pixels drawn (class-balanced) for fitting."
    )
    selected_features: int | None = Field(
        default=16,
        ge=1,
        description="Features computed over the volume: the most important of a first fit; empty keeps them all.",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _scales_positive(self) -> RandomForestParameters:
        if not self.scales or min(self.scales) <= 0:
            raise ValueError("scales must be a non-empty list of positive numbers")
        return self


ModelParameters = Annotated[
    MSDNetParameters | TUNetParameters | TUNet3PlusParameters | RandomForestParameters,
    Field(discriminator="name"),
]
