"""Frozen configuration dataclasses for every stage, their JSON round-trip and the presets.

Each field carries a one-line docstring (the string right below it); `field_help` reads those so the
CLI's help text comes from here and nowhere else.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.saes import ARCHITECTURES, DEFAULT_ARCH, ArchName, architecture


class ConfigError(UserError, ValueError):
    """A configuration file or value that cannot be used; the message says what to fix."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
        """the key (dotted for nested ones) that was missing, unknown or of the wrong type, when one was"""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_finite(cfg) -> None:
    """Every number of a config is finite: an infinite λ or θ₀ would train to NaN yet end "successfully"."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name.replace('_', '-')} must be a finite number, not {value}", f.name)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    """'synthetic' (offline), 'imagenette' or an image folder's path (collect: the model's own when not given)"""
    n_train: int = 4000
    """number of synthetic training images (synthetic only)"""
    n_val: int = 500
    """number of synthetic validation images (synthetic only)"""
    data_seed: int = 0
    """seed of the synthetic generator; the same seed draws the same images"""
    imagenette_size: str = "160px"
    """Imagenette variant to download: '160px', '320px' or 'full'"""
    val_fraction: float = 0.1
    """fraction of an image folder held out for validation"""
    data_dir: str = ""
    """an extracted Imagenette (imagenette2-160/ or its parent), read as it is (empty: data/imagenette, downloaded)"""

    def validate(self) -> None:
        _check_finite(self)
        _check(self.n_train >= 1 and self.n_val >= 1, "n_train and n_val must be at least 1")
        _check(self.imagenette_size in ("160px", "320px", "full"), "imagenette_size must be 160px, 320px or full")
        _check(0.0 < self.val_fraction < 1.0, "val_fraction must be between 0 and 1")

    @property
    def is_folder(self) -> bool:
        return self.dataset not in ("synthetic", "imagenette", "")

    def resolved(self) -> DataConfig:
        """The same data with a folder (and data_dir) named by its absolute path, so it reads alike from any cwd."""

        def absolute(path: str) -> str:
            return str(Path(path).expanduser().resolve()) if path else path

        return dataclasses.replace(
            self,
            dataset=absolute(self.dataset) if self.is_folder else self.dataset,
            data_dir=absolute(self.data_dir),
        )

    def same_dataset(self, other: DataConfig) -> bool:
        """Whether two settings name the same images (a folder by its path, Imagenette by its size)."""
        a, b = self.resolved(), other.resolved()
        return a.dataset == b.dataset and (a.dataset != "imagenette" or a.imagenette_size == b.imagenette_size)

    def following(self, model_data: DataConfig | None) -> DataConfig:
        """What a stage that follows a model reads: the model's own data when none or the same dataset is named (so a
        folder keeps its split and a synthetic set its seed and sizes), else the data named; after an imported model
        (no data of ours: `model_data` None), the data named or the offline default."""
        if model_data is None:
            return (self if self.dataset else dataclasses.replace(self, dataset="synthetic")).resolved()
        if not self.dataset or self.same_dataset(model_data):
            inherited = model_data.resolved()
            return dataclasses.replace(inherited, data_dir=self.resolved().data_dir or inherited.data_dir)
        return self.resolved()

    @property
    def label(self) -> str:
        """A short name of the data for titles: 'synthetic', 'imagenette 160px' or 'folder pets/'."""
        if self.dataset == "imagenette":
            return f"imagenette {self.imagenette_size}"
        if self.is_folder:
            return f"folder {Path(self.dataset).name or self.dataset}/"
        return self.dataset or "the model's data"


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 224
    """input side in pixels (the AlexNet stem needs 224 for a genuine 6x6 grid)"""
    conv_channels: tuple[int, ...] = (96, 256, 384, 384, 256)
    """output channels of the five AlexNet convolutions; the last one is the token width"""
    n_layer: int = 16
    """number of transformer blocks"""
    n_head: int = 16
    """attention heads per block"""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of the token width"""
    dropout: float = 0.5
    """dropout in attention and MLP outputs"""
    grid_size: int = 6
    """side of the token grid after adaptive average pooling (6 gives 36 tokens)"""
    n_classes: int = 10
    """number of output classes"""
    learned_pos_emb: bool = False
    """add learned position embeddings to the tokens (off in the reference)"""

    def validate(self) -> None:
        _check_finite(self)
        _check(
            len(self.conv_channels) == 5 and all(c >= 2 and c % 2 == 0 for c in self.conv_channels),
            "conv_channels must be 5 even numbers (the grouped convolutions split them in two)",
        )
        _check(self.n_layer >= 1 and self.n_head >= 1, "n_layer and n_head must be at least 1")
        _check(
            self.n_embd % self.n_head == 0, f"the token width {self.n_embd} must be divisible by n_head {self.n_head}"
        )
        _check(self.image_size == 224, "image_size must be 224: the AlexNet stem needs it for a real 6x6 grid")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(self.grid_size >= 1, "grid_size must be at least 1")
        _check(self.n_classes >= 2, "n_classes must be at least 2: a classifier needs two classes")

    @property
    def n_embd(self) -> int:
        return self.conv_channels[-1]

    @property
    def n_tokens(self) -> int:
        return self.grid_size * self.grid_size


@dataclass(frozen=True)
class TrainModelConfig:
    preset: str = "demo"
    """name of the preset these values started from"""
    data: DataConfig = field(default_factory=DataConfig)
    """dataset settings"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """architecture settings"""
    epochs: int = 10
    """number of passes over the training set"""
    batch_size: int = 64
    """images per optimizer step"""
    lr: float = 1e-4
    """AdamW learning rate"""
    weight_decay: float = 5e-4
    """AdamW weight decay"""
    lr_schedule: str = "constant"
    """'constant' (the reference) or 'cosine' (short linear warm-up, then cosine decay to 10%)"""
    seed: int = 0
    """seed for weight init and data order"""
    device: str = "auto"
    """'auto' (cuda > mps > cpu), 'cuda', 'cuda:N', 'mps' or 'cpu'"""
    bf16: bool = True
    """use bf16 autocast on CUDA (ignored elsewhere)"""
    checkpoint_every: int = 200
    """also checkpoint every this many steps, besides each epoch end"""
    num_workers: int = 0
    """DataLoader worker processes for image folders (spawned, safe inside the app)"""

    def validate(self) -> None:
        _check_finite(self)
        _check(self.preset in PRESETS, f"preset must be one of {', '.join(PRESETS)}")
        _check(self.epochs >= 1, "epochs must be at least 1")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(self.lr > 0 and self.weight_decay >= 0, "lr must be positive and weight_decay non-negative")
        _check(self.lr_schedule in ("constant", "cosine"), "lr_schedule must be 'constant' or 'cosine'")
        _check(self.checkpoint_every >= 1 and self.num_workers >= 0, "checkpoint_every must be >= 1, num_workers >= 0")


@dataclass(frozen=True)
class CollectConfig:
    model: str = ""
    """model run to collect from (a name in models/)"""
    checkpoint: str = "best"
    """which checkpoint of the model run: 'best' (lowest validation loss) or 'last'"""
    hook: str = ""
    """hook point to record, e.g. blocks.6.resid_post (empty: the residual stream near the middle)"""
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset=""))
    """dataset settings (empty dataset, or the model's own: the model run's dataset settings and split)"""
    split: str = "train"
    """which split to collect: 'train', 'val' or (image folders) 'all'"""
    limit: int = 0
    """collect at most this many images, a seeded random subset (0: all)"""
    dtype: str = "float16"
    """storage dtype of the activations: 'float16' or 'float32'"""
    shard_images: int = 4096
    """images per shard file (each shard holds shard_images x 36 token rows)"""
    batch_size: int = 64
    """images per forward pass"""
    device: str = "auto"
    """'auto' (cuda > mps > cpu), 'cuda', 'cuda:N', 'mps' or 'cpu'"""
    bf16: bool = False
    """run the forward pass under bf16 autocast on CUDA (activations are then bf16-rounded)"""
    name: str = ""
    """name of the activation set (empty: derived from model, hook, dataset and split)"""

    def validate(self) -> None:
        _check_finite(self)
        _check(self.checkpoint in ("best", "last"), "checkpoint must be 'best' or 'last'")
        _check(self.split in ("train", "val", "all"), "split must be 'train', 'val' or 'all'")
        _check(self.limit >= 0, "limit must be 0 (all) or a positive number of images")
        _check(self.dtype in ("float16", "float32"), "dtype must be 'float16' or 'float32'")
        _check(self.shard_images >= 1 and self.batch_size >= 1, "shard_images and batch_size must be at least 1")


@dataclass(frozen=True)
class SAETrainConfig:
    activations: str = ""
    """activation set to train on (a name in activations/)"""
    arch: ArchName = DEFAULT_ARCH
    """'jumprelu' (Rajamanoharan et al.), 'topk' (Gao et al., with AuxK) or 'batchtopk' (Bussmann et al.)"""
    k: int = 16
    """features kept per token (topk) or per token on average over the batch (batchtopk); unused by jumprelu"""
    aux_k_coeff: float = 1 / 32
    """weight alpha of the AuxK loss that revives dead TopK/BatchTopK latents (the paper's 1/32)"""
    expansion: int = 8
    """dictionary size as a multiple of d_model (8: 2048 features for d_model 256)"""
    l0_coeff: float = 0.003
    """sparsity coefficient lambda on the L0 penalty after its warm-up (0.003: L0 ~11 on the demo set, any width)"""
    bandwidth: float = 0.001
    """bandwidth eps of the rectangle kernel in the threshold's pseudo-derivative"""
    theta_init: float = 0.001
    """initial JumpReLU threshold of every feature"""
    lr: float = 2e-3
    """peak Adam learning rate"""
    theta_lr_scale: float = 0.3
    """the thresholds' learning rate as a multiple of lr (0.3: lambda reaches L0 2 on the demo set, 0.1 stalls at 4;
    1.0 leaves 7% of features dead)"""
    pre_act_coeff: float = 0.001
    """weight of the pre-activation loss on dead JumpReLU features (Anthropic, January 2025; SAELens's
    pre_act_loss_coefficient): it raises their pre-activations and lowers their thresholds until they fire again
    (0.001: 23% -> 1.4% dead at d = 256, 0.8% -> 0.2% on the demo set, L0 and FVU unchanged; 0 turns it off)"""
    adam_beta1: float = 0.0
    """Adam beta1 (0 as in the paper)"""
    adam_beta2: float = 0.999
    """Adam beta2"""
    lr_warmup_fraction: float = 0.05
    """fraction of steps over which the learning rate rises linearly from 0"""
    lr_decay_fraction: float = 0.2
    """final fraction of steps over which the learning rate decays linearly to 0"""
    l0_warmup_fraction: float = 0.1
    """fraction of steps over which lambda rises linearly from 0"""
    batch_size: int = 4096
    """tokens per step"""
    tokens: int = 10_000_000
    """training tokens in total (steps = tokens / batch_size)"""
    heldout_every: int = 20
    """every this-many-th image is held out and never trained on (the evaluation's images when no val set exists)"""
    eval_activations: str = ""
    """activation set to evaluate on (empty: the model's val split collected at the same hook, when there is one)"""
    log_every: int = 20
    """steps between metric rows"""
    eval_every: int = 500
    """steps between evaluations on held-out tokens (and one at the end)"""
    checkpoint_every: int = 500
    """steps between checkpoints (and one on stop)"""
    dead_window_tokens: int = 1_000_000
    """a feature silent for this many training tokens counts as dead"""
    seed: int = 0
    """seed for initialisation and data order"""
    device: str = "auto"
    """'auto' (cuda > mps > cpu), 'cuda', 'cuda:N', 'mps' or 'cpu'"""
    bf16: bool = True
    """bf16 decoder and backward matmuls on CUDA (encoder, z - theta, gate, weights: float32); ignored elsewhere"""
    resident: str = "auto"
    """keep the whole set on the device: 'auto' (when it fits), 'yes' or 'no' (stream with prefetch)"""

    def __post_init__(self) -> None:
        # checked on construction, dataclasses.replace included: every SAE is built from a registered architecture
        _check(self.arch in ARCHITECTURES, f"arch must be one of {', '.join(ARCHITECTURES)}")

    def validate(self) -> None:
        _check_finite(self)
        _check(
            self.expansion >= 1 and self.batch_size >= 1 and self.tokens >= self.batch_size,
            "expansion and batch_size must be >= 1 and tokens at least one batch",
        )
        _check(
            self.l0_coeff >= 0
            and self.pre_act_coeff >= 0
            and self.bandwidth > 0
            and self.theta_init > 0
            and self.lr > 0
            and self.theta_lr_scale > 0,
            "l0_coeff and pre_act_coeff must be >= 0; bandwidth, theta_init, lr and theta_lr_scale must be positive",
        )
        _check(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "Adam betas must be in [0, 1)")
        for name in ("lr_warmup_fraction", "lr_decay_fraction", "l0_warmup_fraction"):
            _check(0 <= getattr(self, name) <= 1, f"{name} must be between 0 and 1")
        _check(self.heldout_every >= 2, "heldout_every must be at least 2")
        _check(
            min(self.log_every, self.eval_every, self.checkpoint_every, self.dead_window_tokens) >= 1,
            "log_every, eval_every, checkpoint_every and dead_window_tokens must be >= 1",
        )
        _check(self.resident in ("auto", "yes", "no"), "resident must be 'auto', 'yes' or 'no'")
        _check(self.k >= 1 and self.aux_k_coeff >= 0, "k must be at least 1 and aux_k_coeff at least 0")

    @property
    def total_steps(self) -> int:
        return self.tokens // self.batch_size

    @property
    def sparsity(self) -> str:
        """What sets this SAE's sparsity, as a label: 'λ 0.003' or 'k 16'."""
        return architecture(self.arch).sparsity_label(self)


SWEPT_FIELDS = ("arch", "l0_coeff", "k", "expansion")
"""what may differ between the SAEs of one sweep (they share every batch, so everything about the data may not)"""


def sweep_configs(
    base: SAETrainConfig,
    arch: tuple[str, ...] = (),
    l0_coeff: tuple[float, ...] = (),
    k: tuple[int, ...] = (),
    expansion: tuple[int, ...] = (),
) -> list[SAETrainConfig]:
    """The cross product of the given values over the base config; each architecture varies its own sparsity knob
    (λ the JumpReLU SAEs, k the TopK and BatchTopK ones)."""
    configs = []
    swept = dict(l0_coeff=l0_coeff, k=k)  # by config field
    for a in arch or (base.arch,):
        _check(a in ARCHITECTURES, f"arch must be one of {', '.join(ARCHITECTURES)}")
        knob = architecture(a).knob
        sparsities = [{knob: v} for v in swept[knob] or (getattr(base, knob),)]
        for e in expansion or (base.expansion,):
            for sparsity in sparsities:
                cfg = dataclasses.replace(base, arch=a, expansion=e, **sparsity)
                cfg.validate()
                configs.append(cfg)
    return configs


@dataclass(frozen=True)
class IndexConfig:
    sae: str = ""
    """the SAE run in saes/ to index"""
    activations: str = ""
    """the activation set to index over (empty: the one the SAE was trained on)"""
    device: str = "auto"
    """'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'"""
    images_per_batch: int = 128
    """images per step of the streaming pass"""
    checkpoint_every_s: float = 60.0
    """seconds between saved states of the pass: a stopped or killed index continues from the last one"""

    def validate(self) -> None:
        _check_finite(self)
        _check(self.images_per_batch >= 1, "images_per_batch must be at least 1")
        _check(self.checkpoint_every_s >= 0, "checkpoint_every_s must be 0 (every step) or more seconds")


MODEL_LIBRARIES = ("timm", "torchvision", "open_clip", "hf")


@dataclass(frozen=True)
class ImportModelConfig:
    spec: str = ""
    """the model: timm:NAME, torchvision:NAME, open_clip:ARCH/TAG or hf:REPO (e.g. timm:vit_small_patch16_224)"""
    weights: str = ""
    """a file of its weights (safetensors, or a weights-only torch file); empty: the library's own download"""
    name: str = ""
    """name of the model run (empty: derived from the spec)"""

    def validate(self) -> None:
        library, _, name = self.spec.partition(":")
        _check(
            not self.spec or (library in MODEL_LIBRARIES and bool(name) and len(self.spec) <= 200),
            f"spec {self.spec[:80]!r} is not LIBRARY:NAME with LIBRARY one of {', '.join(MODEL_LIBRARIES)} "
            f"(e.g. timm:vit_small_patch16_224, torchvision:resnet50 or open_clip:ViT-B-32/openai)",
        )


def seed_preset() -> TrainModelConfig:
    """The reference architecture, exactly."""
    return TrainModelConfig(preset="seed", epochs=10)


def demo_preset() -> TrainModelConfig:
    """Same design, sized so the whole demo pipeline runs in ~5 minutes on 2 CPU cores."""
    return TrainModelConfig(
        preset="demo",
        data=DataConfig(n_train=3000, n_val=400),
        model=ModelConfig(conv_channels=(32, 64, 96, 96, 64), n_layer=4, n_head=4, dropout=0.1),
        epochs=8,
        batch_size=64,
        lr=1e-3,
        lr_schedule="cosine",
        weight_decay=5e-4,
        checkpoint_every=50,
    )


PRESETS: dict[str, typing.Callable[[], TrainModelConfig]] = {"demo": demo_preset, "seed": seed_preset}


def preset(name: str) -> TrainModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _where(path: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else (f".{part}" if i else part) for i, part in enumerate(path))


def _coerce(value, annotation, path: tuple):
    """Check one JSON value against a field's annotation and convert lists/dicts into tuples/dataclasses.

    `path` (the file, then keys and indices) becomes text only for an error: a manifest holds a million values.
    """
    if annotation in _SCALARS and type(value) is annotation:
        return value  # the common case, first
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value, path)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, path)
            except ConfigError:
                pass
        raise ConfigError(f"{_where(path)} has the wrong type ({type(value).__name__}); fix or delete the file")
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            choices = ", ".join(map(str, typing.get_args(annotation)))
            raise ConfigError(f"{_where(path)} must be one of {choices}; fix or delete the file")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(path)} must be a list, not {type(value).__name__}; fix or delete the file")
        item_types = typing.get_args(annotation)
        if item_types[-1] is Ellipsis:
            item_types = (item_types[0],) * len(value)
        elif len(value) != len(item_types):
            raise ConfigError(f"{_where(path)} must hold {len(item_types)} items; fix or delete the file")
        return tuple(_coerce(v, t, (*path, i)) for i, (v, t) in enumerate(zip(value, item_types)))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{_where(path)} must be a JSON object; fix or delete the file")
        item_type = typing.get_args(annotation)[1]
        return {k: _coerce(v, item_type, (*path, k)) for k, v in value.items()}
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{_where(path)} must be null")
        return None
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{_where(path)} must be an integer, not a boolean; fix or delete the file")
    if annotation in _SCALARS and not isinstance(value, annotation):
        raise ConfigError(
            f"{_where(path)} must be {annotation.__name__}, not {type(value).__name__}; fix or delete the file"
        )
    return value


_SCALARS = (int, float, str, bool)


@functools.cache
def type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolving string annotations is slow; manifests hold thousands of entries


@functools.cache
def _schema(cls) -> tuple[frozenset[str], frozenset[str]]:
    """(every field, the fields without a default) of a dataclass."""
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return frozenset(f.name for f in fields), frozenset(required)


def from_dict(cls, data, where: str = "config"):
    """Build a frozen config from a JSON object, refusing unknown keys and wrong types; missing keys take defaults."""
    return _from_dict(cls, data, (where,))


def _from_dict(cls, data, path: tuple):
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(path)} must be a JSON object; fix or delete the file")
    names, required = _schema(cls)
    if not names.issuperset(data):
        unknown = sorted(set(data) - names)
        raise ConfigError(
            f"{_where(path)} has unknown keys {unknown}; remove them or use a matching vitsae-tui version", unknown[0]
        )
    if not required.issubset(data):
        missing = sorted(required - set(data))
        raise ConfigError(f"{_where(path)} lacks {missing}; fix or delete the file", missing[0])
    hints = type_hints(cls)
    values = {}
    for key, value in data.items():
        try:
            values[key] = _coerce(value, hints[key], (*path, key))
        except ConfigError as e:
            e.field = key if e.field is None else f"{key}.{e.field}"
            raise
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def from_json(cls, text: str, where: str = "config"):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}); fix or delete the file") from None
    return from_dict(cls, data, where)


@functools.cache
def field_help(cls) -> dict[str, str]:
    """The docstring under each field of a config dataclass, by field name."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    helps = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                helps[node.target.id] = str(following.value.value)
    return helps
