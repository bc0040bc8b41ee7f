"""Validated run configuration (one schema for `weakseg train` and every experiment row), with overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from weakseg.errors import ConfigError
from weakseg.models.encoders import OFFLINE_ENCODER


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(Section):
    name: str = "oxford_pet"
    root: str = "oxford-iiit-pet-subset"
    train_split: str = "trainval"
    test_split: str = "test"
    size: int = 160
    fit: str = "resize"
    tile: int | None = Field(
        None,
        description="large images: train on tile x tile pieces cut at native resolution (zero padding at the right "
        "and bottom borders, padding ignored by the loss) instead of fitting each image to `size` (then `size` and "
        "`fit` are not used), and score the test split on whole images by sliding windows of this size "
        "(train.eval_overlap); a multiple of 32. None: every image fitted to `size`",
    )
    tile_overlap: int = Field(
        0, ge=0, description="overlap of neighbouring training tiles in pixels (0: the tiles partition each image)"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1)
    options: dict[str, Any] = Field(default_factory=dict)
    download: bool = False
    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="a bad data file: 'raise' stops with one line naming it; 'skip' leaves the item out, goes on and "
        "lists it with its reason in the run directory's skipped.json",
    )

    @field_validator("size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v <= 0 or v % 32:
            raise ValueError("size must be a positive multiple of 32")
        return v

    @field_validator("tile")
    @classmethod
    def _tile(cls, v: int | None) -> int | None:
        if v is not None and (v <= 0 or v % 32):
            raise ValueError("tile must be a positive multiple of 32 (the encoder's stride)")
        return v

    @model_validator(mode="after")
    def _tile_overlap(self) -> DatasetConfig:
        if self.tile is not None and self.tile_overlap >= self.tile:
            raise ValueError(f"tile_overlap must be smaller than the tile ({self.tile}), not {self.tile_overlap}")
        return self


class BudgetConfig(Section):
    coverage: float = Field(100.0, ge=0, le=100, description="% of training images keeping full masks")
    boxes: float = Field(0.0, ge=0, le=100, description="% of training images keeping boxes")
    density: float | None = Field(None, ge=0, le=100, description="% of pixels labelled as points")
    point_mode: str = "uniform"
    clicks: int | None = Field(None, ge=1, description="clicks per object (replaces density when set)")
    source: Literal["simulated", "files"] = Field(
        "simulated",
        description="simulated: the settings above choose labels from the ground truth; files: each image has "
        "what the dataset's files hold (masks, boxes, clicks, tags), and the settings above are not used",
    )


class MethodConfig(Section):
    name: str = "full"
    sources: list[str] = Field(
        default_factory=lambda: ["masks"], description="supervision sources of method 'multi', one head each"
    )
    weights: dict[str, float] = Field(default_factory=dict, description="loss weight per source (default 1)")
    generator: str = Field("litemedsam", description="box-prompted mask generator of the 'sam' source")
    generator_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the generator (e.g. litemedsam: {threshold: 0.1})"
    )
    boxes_from: Literal["dataset", "masks"] = Field(
        "dataset", description="boxes of the 'boxes' and 'sam' sources: the dataset's, or each object's mask box"
    )
    cam_method: str = Field("gradcam", description="CAM method of the 'cam' source (soft maps unless refine is set)")
    refine: str | list[Any] | None = None
    segmenter: bool = Field(True, description="train a segmenter on the pseudo-labels (false: their quality only)")
    dev: bool = Field(
        False,
        description="also score the weak labels on the budget's masked training images (stage 'dev': a development "
        "subset that settings may be chosen on; its masks count as tuning use)",
    )
    refine_size: int | None = Field(
        None, description="image size the refinement runs at (more detail for GrabCut/CRF); None: dataset.size"
    )
    rounds: int = Field(3, ge=0, description="selftrain: rounds after round 0 (pseudo-labels made again each round)")
    regenerate: Literal["cam", "seg", "fusion"] = Field(
        "cam",
        description="selftrain: what later rounds make pseudo-labels from: the classification branch's CAMs, the "
        "segmenter's foreground probability, or their mean",
    )
    restart: bool = Field(
        False, description="selftrain: each later round trains from the weights the model was built with"
    )
    tag_weight: float = Field(1.0, ge=0, description="selftrain: weight of the tag loss beside the segmentation loss")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("refine")
    @classmethod
    def _refine(cls, v: str | list[Any] | None) -> str | list[Any] | None:
        from weakseg.refine import parse_pipeline  # checked now, before any data is loaded or model trained

        try:
            parse_pipeline(v)
        except ConfigError as err:
            raise ValueError(str(err)) from err
        return v

    @model_validator(mode="after")
    def _generator(self) -> MethodConfig:
        from weakseg.sources.sam import check_generator_options  # a bad option fails before any work is done

        try:
            check_generator_options(self.generator, self.generator_options)
        except ConfigError as err:
            raise ValueError(str(err)) from err
        return self


class ClassifierConfig(Section):
    """The tag classifier that CAMs explain (``weakseg train-classifier`` and the CAM methods)."""

    encoder: str = OFFLINE_ENCODER
    weights: str | None = "imagenet"
    epochs: int = Field(5, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    crop_scale: tuple[float, float] = (0.35, 1.0)
    augment: list[str] = Field(default_factory=lambda: ["crop", "hflip"])
    multilabel: bool | None = Field(None, description="None: multi-label when some image has several tags")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    drop_rate: float = Field(0.2, ge=0, lt=1)


class CamConfig(Section):
    """How class activation maps are extracted from the classifier."""

    layers: list[str] | None = Field(None, description="module names of target layers; None: the last block")
    scales: list[float] = Field(default_factory=lambda: [1.0], description="input scales, maps averaged")
    flip: bool = Field(False, description="also average the map of the horizontally flipped image")
    batch_size: int = Field(32, ge=1)


class ModelConfig(Section):
    arch: str = "unet"
    encoder: str = OFFLINE_ENCODER
    weights: str | None = "imagenet"
    mode: str = "multiclass"
    options: dict[str, Any] = Field(default_factory=dict, description="extra smp arguments (encoder_output_stride)")


class TrainConfig(Section):
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    loss: str = "ce"
    augment: list[str] = Field(default_factory=lambda: ["hflip"])
    epoch_images: int | None = Field(
        None, ge=1, description="images drawn per epoch (repeating a small set); None: each image once"
    )
    sampling: Literal["union", "balanced"] = Field(
        "union",
        description="with several sources: 'union' draws an epoch's images from all labelled images alike; "
        "'balanced' gives each head an equal share, drawn from the images it labels",
    )
    strong_only: float = Field(
        0.2, ge=0, le=1, description="final fraction of epochs in which only the primary (full-mask) head learns"
    )
    strong_lr: float = Field(
        1.0, gt=0, le=1, description="learning-rate factor from the first strong-only epoch on (fine-tuning)"
    )
    strong_init: str | None = Field(
        None, description="head whose weights the primary head starts the strong-only epochs from (e.g. 'sam')"
    )
    monitor: str = "iou"
    lr_factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(3, ge=0)
    early_stop: int | None = Field(
        None,
        ge=1,
        description="stop once the validation `monitor` score has not improved for this many epochs (`epochs` "
        "stays the upper bound); needs a validation split. None: train all `epochs`",
    )
    amp: bool = Field(True, description="mixed precision on GPU (bfloat16 where supported, else float16)")
    cpu_amp: bool = Field(
        False,
        description="bfloat16 autocast for training on CPU too (with amp; validation and test stay float32): about "
        "2x faster on CPUs with AVX-512 BF16 or AMX, slower on others",
    )
    device: str = "auto"
    workers: int = Field(
        0,
        ge=0,
        description="processes that read and flip the training batches ahead (a torch DataLoader) while the model "
        "trains; 0: read in the training process. The batches, and so the results, are the same either way",
    )
    eval_batch_size: int = Field(32, ge=1, description="images per batch when scoring (windows, with dataset.tile)")
    eval_overlap: int = Field(
        64,
        ge=0,
        description="with dataset.tile: overlap in pixels of the sliding windows that score whole test images (each "
        "pixel is taken from the window where it lies farthest from a window border)",
    )
    tta: list[str] = Field(default_factory=list)
    progress: bool = True


class RunConfig(Section):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    cam: CamConfig = Field(default_factory=CamConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _eval_overlap(self) -> RunConfig:
        tile = self.dataset.tile
        if tile is not None and self.train.eval_overlap >= tile:
            raise ValueError(
                f"train.eval_overlap must be smaller than dataset.tile ({tile}), not {self.train.eval_overlap}"
            )
        return self


CHOICE_STAGES = ("dev", "val")


class ChoiceSpec(Section):
    """Settings a part chooses per row and seed among alternatives, never on the test split.

    ``by: dev.<metric>`` scores each alternative's weak labels on the budget's masked training images (the runs
    set ``method.dev``; those masks count as tuning labels); ``by: val.<metric>`` trains each alternative and
    compares the validation score of its kept checkpoint (the validation split comes out of the budget)."""

    among: dict[str, list[Any]] = Field(description="row settings or config paths -> alternatives (every combination)")
    by: str = Field("dev.iou", description="'dev.<metric>' or 'val.<metric>' (iou, dice, ...), higher is better")

    @field_validator("among")
    @classmethod
    def _among(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not v or any(not values for values in v.values()):
            raise ValueError("choose.among needs at least one setting with at least one alternative")
        return v

    @field_validator("by")
    @classmethod
    def _by(cls, v: str) -> str:
        stage, _, metric = v.partition(".")
        if stage not in CHOICE_STAGES or not metric:
            raise ValueError(f"choose.by must be 'dev.<metric>' or 'val.<metric>' (never the test split), not '{v}'")
        return v

    @property
    def stage(self) -> str:
        return self.by.partition(".")[0]

    @property
    def metric(self) -> str:
        return self.by.partition(".")[2]


class PartSpec(Section):
    """One block of rows in an experiment: overrides applied to the spec, a grid, optionally own seeds, and
    settings chosen among alternatives on the training split (``choose``)."""

    name: str = ""
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] | None = None
    choose: ChoiceSpec | None = None


SPEC_ONLY_KEYS = ("name", "description", "seeds", "grid", "parts")


class ExperimentSpec(RunConfig):
    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0])
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    parts: list[PartSpec] = Field(default_factory=list)

    def run_config(self) -> RunConfig:
        data = self.model_dump(exclude=set(SPEC_ONLY_KEYS))
        return RunConfig.model_validate(data)

    def part_list(self) -> list[PartSpec]:
        """The parts, or one part made of the top-level grid when the spec has none."""
        return self.parts or [PartSpec(grid=self.grid)]


SETTING_PATHS = {
    "method": "method.name",
    "sources": "method.sources",
    "refine": "method.refine",
    "arch": "model.arch",
    "encoder": "model.encoder",
    "loss": "train.loss",
    "coverage": "budget.coverage",
    "density": "budget.density",
    "clicks": "budget.clicks",
    "epochs": "train.epochs",
    "round": "method.options.round",
    "generator": "method.generator",
    "mask_threshold": "method.generator_options.threshold",
    "boxes_from": "method.boxes_from",
    "cam_method": "method.cam_method",
    "tile": "dataset.tile",
}
"""Names of row settings in results, and the config value each one sets."""


def parse_value(text: str) -> Any:
    """A command-line value as YAML (``5`` -> 5, ``[a, b]`` -> list, ``none`` -> None)."""
    value = yaml.safe_load(text)
    return None if value in ("none", "None") else value


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``path='a.b'``."""
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides, where KEY is a dotted config path or a row setting name."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not KEY=VALUE")
        set_path(data, SETTING_PATHS.get(key.strip(), key.strip()), parse_value(text))
    return data


def _validate(cls: type[BaseModel], data: dict[str, Any], source: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
        )
        raise ConfigError(f"invalid config{' ' + source if source else ''}: {problems}") from err


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse '{path}': {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' must hold a mapping at top level")
    return data


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = read_yaml(path) if path else {}
    for key in SPEC_ONLY_KEYS:
        data.pop(key, None)
    return _validate(RunConfig, apply_overrides(data, overrides or []), f"'{path}'" if path else "")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    data = apply_overrides(read_yaml(path), overrides or [])
    data.setdefault("name", Path(path).stem)
    return _validate(ExperimentSpec, data, f"'{path}'")
