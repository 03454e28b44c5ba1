"""Typed configuration for vec2face_tf.

Every choice the DiBiGAN paper leaves open is a named field here, so a user can change it with
an override (``--config=generator.base_channels=128``) instead of editing code. Presets:

* ``smoke``: CI-sized (32 px, a few steps); seconds on a 2-core CPU.
* ``cpu64``: the default; 64 px, sized for a 2-core CPU.
* ``paper128``: 128 px, sized for accelerators.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

# In a training folder (--model_dir): written when the student stage has finished; the trainer
# writes it, the student's export requires it.
STUDENT_DONE_FILE = "student.done"


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """The one canonical aligned face crop of the project (DESIGN §3)."""

    method: str = "dlib_5point"
    size: int = 150
    padding: float = 0.25

    @property
    def key(self) -> str:
        """A short, filesystem-safe identifier used to key caches."""
        return f"{self.method}-{self.size}-p{self.padding:g}"


@dataclasses.dataclass
class DataConfig:
    resolution: int = 64
    identities_per_batch: int = 8  # P of the P x K identity sampling.
    images_per_identity: int = 4  # K of the P x K identity sampling.
    seed: int = 0
    holdout_identities: int = 150
    min_images_per_identity: int = 2


@dataclasses.dataclass
class FlowConfig:
    levels: int = 3
    steps_per_level: int = 8
    hidden_channels: int = 128
    num_bits: int = 5  # Bits kept per channel before uniform dequantisation.
    prior: str = "learned"  # "learned" (Glow's conditional prior) or "standard_normal".
    # Weights of each latent level in the bijective metric; empty means equal weights.
    level_weights: tuple[float, ...] = ()


@dataclasses.dataclass
class StudentConfig:
    # "image": a residual CNN over the face, distilled in its own stage before the GAN
    # (DESIGN §1 item 3, revised); "flow": the paper's head C over the flow latents (ablation).
    kind: str = "image"
    dropout: float = 0.1
    hidden_units: int = 256  # kind=flow: the head's dense width.
    width: int = 32  # kind=image: channels of the first stage, doubled per stage.
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # kind=image: residual blocks per stage.
    # The distillation stage (kind=image).
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 200
    relational_weight: float = 0.0  # weight of the pairwise-cosine (relational) term.
    views: int = 2  # augmented views per photo embedded by the engine (prepare --views).
    eval_every: int = 250  # held-out agreement is measured and logged every N steps.
    eval_faces: int = 1024  # at most this many held-out (and training) faces are measured.


@dataclasses.dataclass
class GeneratorConfig:
    # "film": the FiLM-conditioned decoder with batch norm (models.generator.FiLMGenerator),
    # the presets' choice; "adain": the AdaIN generator with toRGB heads at several scales.
    # The field's default stays "adain" so that configs saved before the field existed (the
    # first demo's) rebuild the network they trained.
    kind: str = "adain"
    noise_dim: int = 64
    # adain: channels of the first block; film: channels of the start map (halved per stage).
    base_channels: int = 256
    min_channels: int = 32
    start_resolution: int = 4
    rgb_scales: int = 2  # adain: toRGB heads at the last N resolutions; film: always 1.
    style_dim: int = 256  # width of the conditioning MLP.


@dataclasses.dataclass
class DiscriminatorConfig:
    base_channels: int = 32
    max_channels: int = 256


@dataclasses.dataclass
class LossConfig:
    adversarial: str = "nonsaturating"  # or "hinge"
    r1_gamma: float = 0.0
    triplet_margin: float = 0.1
    l1_weight: float = 0.0
    # L1 between the frozen student's feature maps of the fake and of the real photo
    # (losses.perceptual_loss); 0 skips it.
    perceptual_weight: float = 0.0
    # The adversarial term's weight once the critic has ramped in (schedule kind two_phase).
    adversarial_weight: float = 1.0
    # Differentiable augmentation of both of D's inputs (losses.diff_augment): "" for none,
    # else a comma-separated subset of color,translation,cutout.
    diff_augment: str = ""


@dataclasses.dataclass
class ScheduleConfig:
    # exponential | decaying_pixel | scale_weights | none | two_phase
    kind: str = "exponential"
    identity_max: float = 1.0
    metric_max: float = 1.0
    tau: float = 2000.0
    # two_phase: GAN steps of critic-free regression (pixels, perceptual, identity) before
    # the critic and the metric come in; then the adversarial weight ramps linearly over
    # critic_ramp steps and the metric rises exponentially while the pixel term decays.
    regression_steps: int = 0
    critic_ramp: int = 500


@dataclasses.dataclass
class TrainConfig:
    student_steps: int = 6000  # the distillation stage (student.kind=image): ~1 h on 2 cores.
    stage1_steps: int = 2000
    stage2_steps: int = 20000
    generator_lr: float = 2e-4
    discriminator_lr: float = 2e-4
    flow_lr: float = 1e-3
    beta_1: float = 0.0
    beta_2: float = 0.99
    ema_momentum: float = 0.999
    refresh_every: int = 200  # Student refresh from engine queries, in GAN steps.
    replay_buffer_size: int = 2048
    max_engine_queries: int = 200_000
    checkpoint_every: int = 500
    log_every: int = 50
    # The held-out curve (training.callbacks.HeldOutMonitor): the EMA generator's SAR and
    # realism on one photo of each of monitor_faces held-out identities, every N GAN steps
    # (0: off). It queries the engine, but no loss sees the answers.
    monitor_every: int = 500
    monitor_faces: int = 150
    # Training stops at the first checkpoint after this many minutes of stage 1 and stage 2
    # together (the student stage is outside it), counted across resumes (0: none): runs that
    # differ in speed or in what they train compared at equal time (ablations).
    time_budget_minutes: float = 0.0
    seed: int = 0  # Initial weights and the refresh's draws; data sampling uses data.seed.
    # "mixed_bfloat16" computes G, D and the student in bfloat16 (the flow stays float32):
    # 1.40x per stage-2 step on this AMX CPU (benchmarks/NOTES.md), quality not yet compared.
    precision: str = "float32"


@dataclasses.dataclass
class Config:
    preset: str = "cpu64"
    engine: str = "dlib"
    crop: CropSpec = dataclasses.field(default_factory=CropSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    student: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


class ConfigError(ValueError):
    """A preset name or an override that does not match the config."""


def _smoke_adain() -> Config:
    return Config(
        preset="smoke",
        data=DataConfig(resolution=32, identities_per_batch=4, images_per_identity=2,
                        holdout_identities=4),
        flow=FlowConfig(levels=2, steps_per_level=2, hidden_channels=16),
        student=StudentConfig(hidden_units=32, width=4, blocks=(1, 1), batch_size=8,
                              warmup_steps=2, views=1, eval_every=2, eval_faces=16),
        generator=GeneratorConfig(noise_dim=8, base_channels=32, min_channels=8, style_dim=32),
        discriminator=DiscriminatorConfig(base_channels=8, max_channels=32),
        schedule=ScheduleConfig(tau=5.0),
        train=TrainConfig(student_steps=4, stage1_steps=4, stage2_steps=4, refresh_every=2,
                          replay_buffer_size=32, max_engine_queries=256,
                          checkpoint_every=2, log_every=1, monitor_every=2, monitor_faces=4),
    )


def _smoke() -> Config:
    config = _smoke_adain()
    config = _regression_first(config, regression_steps=2)
    return dataclasses.replace(config, schedule=dataclasses.replace(config.schedule,
                                                                    critic_ramp=2))


def _regression_first(config: Config, regression_steps: int) -> Config:
    """The recipe of issue 20: a critic-free FiLM regression, then the critic to sharpen."""
    return dataclasses.replace(
        config,
        generator=dataclasses.replace(config.generator, kind="film", rgb_scales=1,
                                      base_channels=2 * config.generator.base_channels,
                                      style_dim=2 * config.generator.style_dim),
        losses=dataclasses.replace(config.losses, l1_weight=1.0, perceptual_weight=1.0,
                                   adversarial_weight=0.1, diff_augment="color,translation"),
        schedule=dataclasses.replace(config.schedule, kind="two_phase",
                                     regression_steps=regression_steps),
        # The regression's measured optimiser (Adam 5e-4, betas 0.5 / 0.99).
        train=dataclasses.replace(config.train, generator_lr=5e-4, beta_1=0.5),
    )


def _cpu64() -> Config:
    return _regression_first(Config(preset="cpu64"), regression_steps=4000)


def _paper128() -> Config:
    return _regression_first(Config(
        preset="paper128",
        data=DataConfig(resolution=128, identities_per_batch=16, images_per_identity=4),
        flow=FlowConfig(levels=4, steps_per_level=16, hidden_channels=256),
        student=StudentConfig(hidden_units=512, width=64, batch_size=128),
        generator=GeneratorConfig(noise_dim=128, base_channels=512, min_channels=64),
        discriminator=DiscriminatorConfig(base_channels=64, max_channels=512),
        train=TrainConfig(student_steps=60000, stage1_steps=20000, stage2_steps=200000),
    ), regression_steps=40000)


PRESETS = {"smoke": _smoke, "cpu64": _cpu64, "paper128": _paper128}


def get_config(preset: str = "cpu64", overrides: typing.Iterable[str] = ()) -> Config:
    """Returns the preset's config with ``section.field=value`` overrides applied."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]()
    for override in overrides:
        config = apply_override(config, override)
    return config


def apply_override(config: Config, override: str) -> Config:
    """Returns a copy of ``config`` with one ``dotted.name=value`` override applied."""
    name, sep, raw_value = override.partition("=")
    if not sep:
        raise ConfigError(f"override {override!r} is not of the form section.field=value")
    path = name.strip().split(".")
    return _replace_path(config, path, raw_value.strip(), name)


def _replace_path(obj: Any, path: list[str], raw_value: str, full_name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    head = path[0]
    if head not in fields:
        raise ConfigError(
            f"unknown config field {full_name!r}: {type(obj).__name__} has {sorted(fields)}")
    current = getattr(obj, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"config field {full_name!r}: {head!r} is not a section")
        return dataclasses.replace(obj, **{head: _replace_path(current, path[1:], raw_value,
                                                                full_name)})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"config field {full_name!r} is a section; name one of its fields")
    field_type = typing.get_type_hints(type(obj))[head]
    return dataclasses.replace(obj, **{head: _parse_value(raw_value, field_type, full_name)})


def _parse_value(raw_value: str, field_type: Any, full_name: str) -> Any:
    try:
        if field_type is bool:
            lowered = raw_value.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(raw_value)
            return lowered in ("true", "1")
        if field_type in (int, float, str):
            return field_type(raw_value)
        if typing.get_origin(field_type) is tuple:
            item_type = typing.get_args(field_type)[0]
            parts = [p for p in raw_value.strip("()[]").split(",") if p.strip()]
            return tuple(item_type(p) for p in parts)
    except ValueError as error:
        raise ConfigError(f"config field {full_name!r}: cannot parse {raw_value!r} as "
                          f"{getattr(field_type, '__name__', field_type)}") from error
    raise ConfigError(f"config field {full_name!r} has unsupported type {field_type}")


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuilds a Config from ``Config.to_dict()`` output (for example a saved config.json)."""
    def build(cls: type, data: dict[str, Any]) -> Any:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                value = build(hint, value)
            elif typing.get_origin(hint) is tuple:
                value = tuple(value)
            kwargs[f.name] = value
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
        return cls(**kwargs)

    return build(Config, values)
