"""Typed experiment configuration: pydantic models filled from `configs/*.yaml` by `load_config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from posisp_dist.isp.registry import DEFAULT_REGISTRY


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = tuple[float, float]


def _ordered(r: Range, name: str) -> None:
    if not r[0] <= r[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {r}")


class UnprocessConfig(_Strict):
    """Brooks et al. 2019 unprocessing ranges (sRGB -> camera raw)."""

    rgb_gain_mean: float = Field(0.8, description="mean of the normal the overall gain's inverse is drawn from")
    rgb_gain_std: float = Field(0.1, ge=0, description="std of that normal")
    red_gain: Range = Field((1.9, 2.4), description="uniform range of the white-balance red gain")
    blue_gain: Range = Field((1.5, 1.9), description="uniform range of the white-balance blue gain")


class LowLightConfig(_Strict):
    """Low-light capture model applied to the linear mosaic: darkening, heteroscedastic noise, quantisation."""

    exposure_ratio: Range = Field((4.0, 16.0), description="signal is divided by a ratio drawn log-uniformly here")
    shot_noise: Range = Field((1e-4, 1.2e-2), description="log-uniform range of the shot-noise variance slope")
    read_noise_slope: float = Field(2.18, description="log read = slope * log shot + intercept + N(0, std)")
    read_noise_intercept: float = Field(1.20)
    read_noise_std: float = Field(0.26, ge=0)
    bit_depth: int = Field(12, ge=8, le=16, description="ADC bits of the stored mosaic")
    black_level: int = Field(256, ge=0, description="sensor counts added as black level")

    @model_validator(mode="after")
    def _check(self) -> LowLightConfig:
        _ordered(self.exposure_ratio, "exposure_ratio")
        _ordered(self.shot_noise, "shot_noise")
        if self.exposure_ratio[0] < 1:
            raise ValueError("exposure_ratio must be >= 1 (1 = normal light)")
        if self.black_level >= 2**self.bit_depth - 1:
            raise ValueError(f"black_level {self.black_level} must be below the white level of {self.bit_depth} bits")
        return self


class DataConfig(_Strict):
    """Built-in annotated scene source and its Parquet shards."""

    root: str = Field(".posisp/data/quick", description="directory of the Parquet shards and manifest")
    image_size: int = Field(128, ge=32, le=2048, description="square image side in pixels (even)")
    n_train: int = Field(1200, ge=1)
    n_val: int = Field(200, ge=1)
    n_test: int = Field(300, ge=1)
    shard_size: int = Field(200, ge=1, description="images per Parquet shard")
    classes: tuple[str, ...] = Field(("disc", "square", "triangle", "cross"), description="object classes")
    objects_per_image: tuple[int, int] = Field((1, 4), description="inclusive range of objects per scene")
    object_size: tuple[int, int] = Field((16, 44), description="object side range in pixels")
    unprocess: UnprocessConfig = UnprocessConfig()
    lowlight: LowLightConfig = LowLightConfig()

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.image_size % 2:
            raise ValueError(f"image_size must be even for a 2x2 Bayer pattern, got {self.image_size}")
        _ordered(self.objects_per_image, "objects_per_image")
        _ordered(self.object_size, "object_size")
        if self.object_size[1] >= self.image_size:
            raise ValueError("object_size must be smaller than image_size")
        from posisp_dist.data.scenes import SHAPES

        unknown = set(self.classes) - set(SHAPES)
        if unknown:
            raise ValueError(f"unknown object classes {sorted(unknown)}; built-in shapes are {sorted(SHAPES)}")
        return self


class DetectorTrainConfig(_Strict):
    """Deterministic offline training of the built-in detector on clean sRGB renders."""

    steps: int = Field(1500, ge=1, description="optimiser steps")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4, description="channels of the first stage")
    seed: int = 0


class TaskConfig(_Strict):
    """The frozen downstream task model."""

    kind: str = Field("builtin_detector", description="builtin_detector | torchvision | ultralytics")
    weights: str | None = Field(None, description="user weights for torchvision/ultralytics adapters")
    cache_dir: str = Field(".posisp/models", description="where the built-in detector is cached")
    train: DetectorTrainConfig = DetectorTrainConfig()
    loss_clip: float = Field(4.0, gt=0, description="per-image task loss is clipped to [0, loss_clip]")
    batch_size: int = Field(64, ge=1, description="images per task-model forward pass")
    score_threshold: float = Field(0.01, ge=0, le=1, description="detections kept for mAP")

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.kind not in ("builtin_detector", "torchvision", "ultralytics"):
            raise ValueError(f"unknown task kind {self.kind!r}; expected builtin_detector, torchvision or ultralytics")
        if self.kind != "builtin_detector" and not self.weights:
            raise ValueError(f"task kind {self.kind!r} needs `weights` (a path to user-supplied weights)")
        return self


class ISPConfig(_Strict):
    """Which modules the policy may use and how long a pipeline may be."""

    modules: tuple[str, ...] = Field(DEFAULT_REGISTRY.names, description="module names from the registry")
    max_len: int = Field(10, ge=1, le=32, description="maximum modules in one pipeline (before STOP)")
    backend: str = Field("auto", description="numpy | cupy | auto")

    @model_validator(mode="after")
    def _check(self) -> ISPConfig:
        for name in self.modules:
            DEFAULT_REGISTRY.index(name)  # raises KeyError naming the unknown module
        if self.backend not in ("numpy", "cupy", "auto"):
            raise ValueError(f"isp.backend must be numpy, cupy or auto, got {self.backend!r}")
        return self


class BaselineConfig(_Strict):
    """The random-search row of the baseline table."""

    n_pipelines: int = Field(24, ge=1, description="random fixed pipelines tried")
    max_len: int = Field(5, ge=1, description="longest random pipeline")
    search_images: int = Field(64, ge=1, description="val images each candidate is scored on")
    seed: int = 0


class Config(_Strict):
    """A whole experiment."""

    seed: int = 0
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    isp: ISPConfig = ISPConfig()
    baselines: BaselineConfig = BaselineConfig()


class ConfigError(ValueError):
    """A config file that cannot be read or does not match the schema."""


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML file into a validated `Config`; errors name the file and the offending field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return Config.model_validate(raw)
    except (ValidationError, KeyError) as e:
        raise ConfigError(f"config {path} is invalid:\n{e}") from None


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a config into dotted keys (for MLflow params and fingerprints)."""
    out: dict[str, Any] = {}
    for k, v in cfg:
        key = f"{prefix}{k}"
        if isinstance(v, BaseModel):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
