"""Typed experiment configuration: pydantic models filled from `configs/*.yaml` by `load_config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from posisp_dist.config_base import Strict as _Strict
from posisp_dist.isp.catalogue import registry_for
from posisp_dist.isp.registry import DEFAULT_REGISTRY
from posisp_dist.task_config import (  # noqa: F401 (the task section's types, re-exported)
    BUILTIN_TASK_CONFIGS,
    BrightnessTaskConfig,
    BuiltinTaskConfig,
    DetectorTrainConfig,
    PluginTaskConfig,
    TaskConfig,
    TorchvisionTaskConfig,
    UltralyticsTaskConfig,
    YoloTrainConfig,
    task_fields,
)
from posisp_dist.tasks.registry import task_kinds

Range = tuple[float, float]


def _distinct(names: tuple[str, ...], field: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{field} names {repeated} more than once")


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
    """The Parquet shards under `root`: generated from the built-in scene source (the fields below root), or
    made from the user's raw files by `posisp data ingest` (`source: ingested`; then only root and transport
    apply: classes, image size and splits come from the ingested manifest)."""

    root: str = Field(".posisp/data/quick", description="directory of the Parquet shards and manifest")
    source: Literal["builtin", "ingested"] = Field(
        "builtin", description="builtin: generate (or reuse) the synthetic set | ingested: use the shards that "
        "`posisp data ingest` wrote under root, never rebuilt or overwritten"
    )
    image_size: int = Field(128, ge=32, le=2048, description="square image side in pixels (even)")
    n_train: int = Field(1200, ge=1)
    n_val: int = Field(200, ge=1)
    n_test: int = Field(300, ge=1)
    shard_size: int = Field(200, ge=1, description="images per Parquet shard")
    classes: tuple[str, ...] = Field(
        ("disc", "square", "triangle", "cross"), min_length=1, description="object classes (at least one, distinct)"
    )
    objects_per_image: tuple[int, int] = Field((1, 4), description="inclusive range of objects per scene")
    object_size: tuple[int, int] = Field((16, 44), description="object side range in pixels")
    unprocess: UnprocessConfig = UnprocessConfig()
    lowlight: LowLightConfig = LowLightConfig()
    transport: Literal["filesystem", "object_store"] = Field(
        "filesystem",
        description="how EnvRunners get shards and task weights: filesystem (read data.root / task.cache_dir on "
        "their node) | object_store (the driver ships the bytes through Ray's object store; no shared disk)",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        _distinct(self.classes, "data.classes")
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


class ISPConfig(_Strict):
    """Which modules the policy may use and how long a pipeline may be."""

    modules: tuple[str, ...] = Field(
        DEFAULT_REGISTRY.names,
        min_length=1,
        description="module names from the catalogue (at least one, distinct); default: the paper's ten, in "
        "AdaptiveISP's order; modules of posisp_dist/isp/extra/ are opt-in (README: The module library)",
    )
    max_len: int = Field(10, ge=1, le=32, description="maximum modules in one pipeline (before STOP)")
    backend: Literal["numpy", "cupy", "auto"] = Field("auto", description="numpy | cupy | auto")
    kernels: Literal["fast", "reference"] = Field(
        "fast", description="fast (fused Numba kernels on CPU) | reference (plain array code)"
    )

    @model_validator(mode="after")
    def _check(self) -> ISPConfig:
        _distinct(self.modules, "isp.modules")
        registry_for(self.modules)  # raises KeyError naming the unknown module and the known ones
        return self


class BaselineConfig(_Strict):
    """The random-search row of the baseline table."""

    n_pipelines: int = Field(24, ge=1, description="random fixed pipelines tried")
    max_len: int = Field(5, ge=1, description="longest random pipeline")
    search_images: int = Field(64, ge=1, description="val images each candidate is scored on")
    seed: int = 0


class EnvConfig(_Strict):
    """The ISP environment seen by each EnvRunner."""

    kind: Literal["sequence", "stepwise"] = Field(
        "sequence", description="sequence (POS-ISP: one action = the pipeline) | stepwise (AdaptiveISP)"
    )
    max_steps: int = Field(5, ge=1, description="stepwise: steps K per episode")
    reuse_penalty: float = Field(1.0, ge=0, description="stepwise: penalty for running a module a second time")
    all_modules_per_step: bool = Field(
        False, description="stepwise: AdaptiveISP's compute profile, all modules run at every step and one is kept"
    )

    preview_size: int = Field(64, ge=8, le=512, description="side of the observation preview (area-downsampled)")
    cost_lambda: float = Field(0.0, ge=0, description="reward -= cost_lambda * summed module cost (paper: 0)")
    brightness_penalty: bool = Field(True, description="subtract the paper's brightness range penalty")
    num_envs_per_runner: int = Field(16, ge=1, description="pipelines one EnvRunner runs per executor call")
    max_images: int | None = Field(None, ge=1, description="cap on the train images an EnvRunner holds")
    pipelines_per_image: int = Field(
        1, ge=1, description="sequence + ppo.advantages terminal: K pipelines sampled for each drawn image in one "
        "batch, each scored against the mean reward of the image's other K-1 (leave-one-out, as RLOO): the image's "
        "own difficulty cancels out of the advantage; 1 = reward - V(s)",
    )

class PolicyConfig(_Strict):
    """The sequence policy network."""

    hidden: int = Field(64, ge=4, description="encoder output and GRU width")
    image_blind: bool = Field(False, description="the paper's variant: the module sequence ignores the image")
    allow_repeats: bool = Field(False, description="let a module appear twice in one pipeline")
    param_learning: Literal["pathwise", "ppo"] = Field(
        "ppo",
        description="how the module parameters are learned: pathwise (POS-ISP: a deterministic, image-conditioned "
        "parameter network trained by backpropagating the task loss through the ISP's torch twin; the sequence "
        "stays PPO) | ppo (a Beta head trained by PPO from the terminal reward, like the sequence)",
    )
    pathwise_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the parameter network (pathwise)")
    param_stats: bool = Field(
        False,
        description="pathwise: the parameter network's head also sees each preview's exposure statistics (mean and "
        "spread of its log2 level per channel), which the LayerNorm over its encoder's features divides out; "
        "without them its parameters can end up the same for every image",
    )
    pathwise_backward: Literal["exact", "fast"] = Field(
        "fast",
        description="gradient through the NLM denoise: exact (its full torch graph; ~10x the cost of the rest of "
        "the pipeline on a CPU) | fast (same value from the fused kernel, image gradient passed straight "
        "through, d/dh by a central difference); the other modules are always exact",
    )
    pathwise_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="pathwise: the share of each EnvRunner step's pipelines whose task loss is backpropagated (a "
        "random subset, its gradients scaled so the batch mean stays unbiased); the rest run the fast kernels and a "
        "forward-only task pass for their reward. Below 1 it saves task-model backward passes (bench/README.md)",
    )


class PPOConfigModel(_Strict):
    """RLlib PPO hyper-parameters, named after the algorithm."""

    lr: float = Field(3e-4, gt=0)
    gamma: float = Field(1.0, ge=0, le=1, description="irrelevant for one-step episodes; kept for the step-wise twin")
    gae_lambda: float = Field(1.0, ge=0, le=1)
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip")
    vf_coef: float = Field(0.5, ge=0, description="value-loss weight")
    ent_coef: float = Field(0.0, ge=0, description="entropy bonus weight")
    kl_coef: float = Field(0.2, ge=0, description="initial KL penalty weight (RLlib default); 0 turns the KL loss off")
    kl_target: float = Field(0.01, gt=0)
    train_batch_size: int = Field(256, ge=1, description="env steps per training iteration")
    minibatch_size: int = Field(64, ge=1)
    num_epochs: int = Field(4, ge=1, description="SGD passes over each train batch")
    grad_clip: float | None = Field(0.5, gt=0)
    vf_clip: float = Field(100.0, gt=0, description="value-loss clip (rewards are in task-score units)")
    advantages: Literal["gae", "terminal"] = Field(
        "gae", description="gae: RLlib's GAE, which adds one bootstrap row per episode to the learner's batch | "
        "terminal (sequence env only): reward - V(s) from the EnvRunners' values, no bootstrap rows (about 11 % "
        "less time per iteration at half the minibatch; it learns differently, see bench/README.md)"
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> PPOConfigModel:
        if self.minibatch_size > self.train_batch_size:
            raise ValueError("ppo.minibatch_size must not exceed ppo.train_batch_size")
        return self


class TrainConfig(_Strict):
    """The training driver and its Ray resources."""

    iterations: int = Field(40, ge=1, description="PPO iterations (each = ppo.train_batch_size env steps)")
    time_budget_s: float | None = Field(None, gt=0, description="stop after this many seconds of training")
    image_budget: int | None = Field(
        None, ge=1, description="stop after this many distinct training images (an image run through K pipelines, "
        "env.pipelines_per_image, counts once)",
    )
    num_env_runners: int = Field(1, ge=0, description="remote EnvRunner actors (0: sample in the driver)")
    num_cpus_per_env_runner: float = Field(1, ge=0)
    num_gpus_per_env_runner: float = Field(0.0, ge=0, description="GPU fraction per EnvRunner (CuPy ISP + task model)")
    num_gpus_per_learner: float = Field(0.0, ge=0, description="GPU for the central learner")
    overlap: bool = Field(
        False,
        description="the EnvRunners sample the next batch while the learner updates on the last one (each batch "
        "then trains weights one update newer than those that sampled it); false: RLlib's PPO, which alternates",
    )
    checkpoint_every: int = Field(5, ge=1, description="iterations between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="local checkpoints kept (all are logged to MLflow)")
    val_every: int = Field(
        0, ge=0, description="every N iterations (and at the end) score the greedy policy's mAP on the val split "
        "and keep the best checkpoint for eval and apply; 0 keeps the last"
    )  # fmt: skip
    out_dir: str = Field(".posisp/runs", description="local checkpoints and figures, one folder per run")
    grid_images: int = Field(6, ge=1, description="val images in the input-vs-ISP picture")
    ray_address: str | None = Field(None, description="Ray cluster address; None starts or joins a local one")
    env_runner_resources: dict[str, float] = Field(
        {}, description="custom Ray resources each EnvRunner needs, e.g. {env_runner: 1} to place them only on "
        "nodes that advertise that resource"
    )


class TrackingConfig(_Strict):
    """MLflow tracking; the URI is explicit (default: a SQLite store under .posisp/mlflow)."""

    uri: str | None = Field(None, description="MLflow tracking URI; None = sqlite:///<abs>/.posisp/mlflow/mlflow.db")
    experiment: str = Field("posisp", min_length=1)
    artifact_root: str | None = Field(None, description="artifact location for a new experiment")


REDIS_SCHEMES = ("redis", "rediss", "unix")


class CacheConfig(_Strict):
    """The score cache shared by every EnvRunner and job: input-RAW reference scores and eval results.

    Without a URL each process keeps its own (the embedded default). With one, a Redis server shares them
    across actors, nodes and jobs; if it is unreachable or goes away, the run warns once naming the URL and
    goes on with the in-process cache (recomputing what it misses)."""

    redis_url: str | None = Field(
        None, description="redis://host:port[/db], rediss:// (TLS) or unix:///path.sock; None = in-process cache"
    )
    timeout_s: float = Field(2.0, gt=0, le=60, description="Redis connect/read timeout before falling back")

    @model_validator(mode="after")
    def _check(self) -> CacheConfig:
        if self.redis_url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(self.redis_url)
            if parts.scheme not in REDIS_SCHEMES:
                raise ValueError(f"cache.redis_url must be redis://, rediss:// or unix://..., got {self.redis_url!r}")
            if parts.scheme != "unix" and not parts.hostname:
                raise ValueError(f"cache.redis_url {self.redis_url!r} names no host")
            if parts.scheme == "unix" and not parts.path:
                raise ValueError(f"cache.redis_url {self.redis_url!r} names no socket path")
        return self


class Config(_Strict):
    """A whole experiment."""

    seed: int = 0
    data: DataConfig = DataConfig()
    task: TaskConfig = BuiltinTaskConfig()
    isp: ISPConfig = ISPConfig()
    baselines: BaselineConfig = BaselineConfig()
    env: EnvConfig = EnvConfig()
    policy: PolicyConfig = PolicyConfig()
    ppo: PPOConfigModel = PPOConfigModel()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    cache: CacheConfig = CacheConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.ppo.advantages == "terminal" and self.env.kind != "sequence":
            raise ValueError("ppo.advantages: terminal is for env.kind: sequence (one terminal step per episode); "
                             f"env.kind {self.env.kind!r} needs gae")
        k = self.env.pipelines_per_image
        if k > 1 and self.ppo.advantages != "terminal":
            raise ValueError(f"env.pipelines_per_image: {k} needs ppo.advantages: terminal (the leave-one-out "
                             "baseline over an image's pipelines replaces GAE's value baseline)")
        if self.env.num_envs_per_runner % k:
            raise ValueError(f"env.num_envs_per_runner ({self.env.num_envs_per_runner}) must be a multiple of "
                             f"env.pipelines_per_image ({k}): an image's K pipelines run in one step")
        task = self.task
        if isinstance(task, PluginTaskConfig) and task.module is None and task.kind not in task_kinds():
            raise ValueError(f"unknown task kind {task.kind!r}; registered: {task_kinds()} (a plugin kind needs "
                             "`module`, the module that registers it)")
        return self


class ConfigError(ValueError):
    """A config file that cannot be read or does not match the schema."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML file into a validated `Config`; errors name the file and the offending field."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a safe loader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory; give a YAML file such as configs/quick.yaml") from None
    except OSError as e:
        raise ConfigError(f"config {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML{where}: {what}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"cannot set {dotted}: {where} is a value ({node!r}), not a section")
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
