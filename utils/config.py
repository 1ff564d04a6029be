"""Configuration: YAML files with ``_base_`` inheritance, ``a.b=value`` overrides, typed validation.

Loading goes: read the file -> merge its ``_base_`` files (a path or a list, relative to the file
that names them, later ones and the file itself win) -> apply command-line overrides -> convert to
the frozen dataclasses below, checking every key and type -> cross-field checks. Every default lives
in ``configs/base.yaml``; the dataclasses declare types only, so a default is never written twice.

Errors are ``ConfigError`` with one line naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

BASE_KEY = "_base_"
BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message names the key."""


# --------------------------------------------------------------------------------------------
# Schema (types only: defaults live in configs/base.yaml)
# --------------------------------------------------------------------------------------------

# Allowed values that code outside the config also checks or offers; the owning modules read them
# with ``typing.get_args`` (nets.necks.NECK_CONVS, utils.boxes.ASSIGN_MODES, ...).
NeckConv = Literal["standard", "depthwise", "ghost"]
DataFormat = Literal["voc", "coco", "yolo"]
DemoPreset = Literal["shapes", "dense"]
AssignMode = Literal["best", "multi"]
HeadKind = Literal["anchor_based", "anchor_free"]
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
DistributeMode = Literal["none", "mirrored", "multi_worker"]


@dataclass(frozen=True)
class ModelConfig:
    backbone: str
    backbone_options: dict[str, Any]
    neck: str
    neck_options: dict[str, Any]
    neck_conv: NeckConv
    pretrained: str | None
    input_size: list[int]
    head: HeadKind
    reg_max: int
    anchors: str
    anchors_mask: list[list[int]]
    autoanchor: float
    bn_momentum: float | None


@dataclass(frozen=True)
class DataConfig:
    format: DataFormat
    root: str
    coco_images: str
    classes: str
    train_split: list[str]
    val_split: list[str]
    test_split: list[str]
    use_difficult: bool
    max_boxes: int
    cache_index: bool
    cache_images: bool
    demo_dataset: str | None
    demo_preset: DemoPreset


@dataclass(frozen=True)
class AugmentConfig:
    mosaic: float
    mixup: float
    special_aug_ratio: float
    jitter: float
    scale: list[float]
    mosaic_scale: list[float]
    flip: float
    hue: float
    sat: float
    val: float
    min_box_size: float
    multi_scale: float


@dataclass(frozen=True)
class LossConfig:
    assign: AssignMode
    anchor_thresh: float
    ignore_thresh: float
    obj_iou_ratio: float
    balance: list[float]
    box_ratio: float
    obj_ratio: float
    cls_ratio: float
    label_smoothing: float
    focal_loss: bool
    focal_alpha: float
    focal_gamma: float
    tal_topk: int
    tal_alpha: float
    tal_beta: float
    box_gain: float
    cls_gain: float
    dfl_gain: float


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    time_budget: float | None
    freeze_epochs: int
    freeze_batch_size: int
    batch_size: int
    optimizer: Literal["sgd", "adam"]
    momentum: float
    nesterov: bool
    init_lr: float
    min_lr_ratio: float
    nominal_batch_size: int
    lr_limits_sgd: list[float]
    lr_limits_adam: list[float]
    lr_schedule: Literal["cos", "step"]
    warmup_epochs: float
    warmup_max_ratio: float
    warmup_lr_ratio: float
    step_count: int
    weight_decay: float
    clip_grad_norm: float | None
    ema: bool
    ema_decay: float
    ema_tau: float
    save_dir: str
    save_period: int
    eval_period: int
    eval_max_images: int
    best_metric: Literal["map", "val_loss"]
    seed: int
    precision: Precision
    steps_per_execution: int
    distribute: DistributeMode
    sync_bn: bool


@dataclass(frozen=True)
class EvalConfig:
    score_threshold: float | Literal["auto"]
    uncalibrated_score_threshold: float
    map_score_threshold: float
    nms_iou: float
    max_detections: int
    map_iou: float


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    data: DataConfig
    augment: AugmentConfig
    loss: LossConfig
    train: TrainConfig
    eval: EvalConfig
    name: str  # the config's name (its file stem unless set); names run folders


# --------------------------------------------------------------------------------------------
# Reading and merging
# --------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``update``; nested mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` with its ``_base_`` files merged in (no validation)."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise ConfigError(f"{path}: {BASE_KEY} inheritance cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, load_raw(path.parent / base, (*_chain, path)))
    return _deep_merge(merged, data)


_OVERRIDE = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)=(.*)$", re.DOTALL)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is YAML (ints, floats incl. ``1e-3``, bools, lists, null)."""
    match = _OVERRIDE.match(text.strip())
    if not match:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    keys, raw = match.group(1).split("."), match.group(2)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: cannot parse the value {raw!r}") from None
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b=value`` in a copy of ``data``; unknown keys are caught by validation."""
    data = _deep_merge({}, data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                dotted = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {text!r}: {dotted} is not a section")
            else:
                child = node[key] = dict(child)
            node = child
        node[keys[-1]] = value
    return data


# --------------------------------------------------------------------------------------------
# Typed conversion
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the type ``tp``; return it converted (ints to floats, lists)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    wrong = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value not in args:
            raise wrong
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise wrong
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise wrong
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        raise wrong
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown and missing keys are errors."""
    where = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(names)})"
            raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: unknown key{hint}")
    values = {}
    for name in names:
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            raise ConfigError(
                f"{key}: missing (does the file inherit configs/base.yaml via _base_?)"
            )
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, data[name], key)
        else:
            values[name] = _coerce(data[name], tp, key)
    return cls(**values)


# --------------------------------------------------------------------------------------------
# Cross-field checks
# --------------------------------------------------------------------------------------------


def read_anchors(path: str | Path) -> list[list[float]]:
    """Read anchors ``w,h, w,h, ...`` (commas and/or whitespace) from a text file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.anchors: file not found: {path}")
    try:
        tokens = [t for t in re.split(r"[,\s]+", path.read_text(encoding="utf-8")) if t]
    except UnicodeDecodeError as exc:
        raise ConfigError(f"model.anchors: {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        numbers = [float(t) for t in tokens]
    except ValueError:
        raise ConfigError(f"model.anchors: {path}: expected numbers 'w,h, w,h, ...'") from None
    if not numbers or len(numbers) % 2:
        raise ConfigError(f"model.anchors: {path}: expected an even count of numbers (w,h pairs)")
    if any(n <= 0 for n in numbers):
        raise ConfigError(f"model.anchors: {path}: anchor sizes must be positive")
    return [numbers[i : i + 2] for i in range(0, len(numbers), 2)]


def _check(cfg: Config) -> None:
    size = cfg.model.input_size
    if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
        raise ConfigError(f"model.input_size: must be [height, width], multiples of 32; got {size}")
    if cfg.model.head == "anchor_free":
        _check_no_anchor_settings(cfg)
    else:
        _check_anchors(cfg)
        if cfg.model.reg_max != base_section(ModelConfig).reg_max:
            raise ConfigError("model.reg_max: only the anchor_free head uses it; remove it or "
                              "set model.head: anchor_free")  # fmt: skip
    if cfg.model.reg_max < 2:
        raise ConfigError(f"model.reg_max: need at least 2 bins, got {cfg.model.reg_max}")
    if cfg.loss.tal_topk < 1:
        raise ConfigError(f"loss.tal_topk: must be at least 1, got {cfg.loss.tal_topk}")
    if not Path(cfg.data.classes).is_file():
        raise ConfigError(f"data.classes: file not found: {cfg.data.classes}")
    if cfg.data.demo_dataset and cfg.data.format != "voc":
        raise ConfigError("data.demo_dataset: the demo dataset is VOC; set it to null for "
                          f"data.format {cfg.data.format}")  # fmt: skip
    if len(cfg.loss.balance) != 3:
        raise ConfigError(
            f"loss.balance: need 3 weights (strides 32, 16, 8), got {cfg.loss.balance}"
        )
    for key in ("obj_iou_ratio", "label_smoothing"):
        if not 0.0 <= getattr(cfg.loss, key) <= 1.0:
            raise ConfigError(f"loss.{key}: must be within [0, 1]")
    for key in ("scale", "mosaic_scale"):
        scale = getattr(cfg.augment, key)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"augment.{key}: need [min, max] with 0 < min <= max, got {scale}")
    for key in ("mosaic", "mixup", "flip", "special_aug_ratio"):
        if not 0.0 <= getattr(cfg.augment, key) <= 1.0:
            raise ConfigError(f"augment.{key}: must be within [0, 1]")
    if not 0.0 <= cfg.augment.multi_scale < 1.0:
        raise ConfigError(f"augment.multi_scale: must be within [0, 1), got "
                          f"{cfg.augment.multi_scale}")  # fmt: skip
    train = cfg.train
    if train.freeze_epochs < 0:
        raise ConfigError("train.freeze_epochs: must be at least 0")
    for key in ("batch_size", "freeze_batch_size", "epochs", "nominal_batch_size"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}: must be at least 1")
    for key in ("lr_limits_sgd", "lr_limits_adam"):
        limits = getattr(train, key)
        if len(limits) != 2 or not 0 < limits[0] <= limits[1]:
            raise ConfigError(f"train.{key}: need [min, max] with 0 < min <= max, got {limits}")
    if train.time_budget is not None and train.time_budget <= 0:
        raise ConfigError(f"train.time_budget: minutes, must be positive; got {train.time_budget}")
    if not 0.0 <= cfg.model.autoanchor <= 1.0:
        raise ConfigError(f"model.autoanchor: a recall within [0, 1], got {cfg.model.autoanchor}")
    if train.distribute != "none" and train.clip_grad_norm is not None:
        # Keras clips each replica's gradient before the replicas' gradients are summed.
        raise ConfigError("train.clip_grad_norm: not supported with train.distribute (set null)")


def _check_anchors(cfg: Config) -> None:
    mask = cfg.model.anchors_mask
    if len(mask) != 3:
        raise ConfigError(f"model.anchors_mask: need one list per output (3), got {len(mask)}")
    if len({len(m) for m in mask}) != 1:
        raise ConfigError(f"model.anchors_mask: every output needs the same anchor count: {mask}")
    anchors = read_anchors(cfg.model.anchors)
    flat = sorted(i for m in mask for i in m)
    if len(anchors) != len(flat) or flat != list(range(len(anchors))):
        raise ConfigError(
            f"model.anchors_mask: {mask} must use each of the {len(anchors)} anchors in "
            f"{cfg.model.anchors} exactly once"
        )


def _same_file(path: str, base_path: str) -> bool:
    """Whether ``path`` names the file of base.yaml's ``base_path`` (relative to the working
    directory, like every data path, or to the project root)."""
    target = Path(path).resolve()
    return path == base_path or target in (
        Path(base_path).resolve(),
        (BASE_CONFIG.parents[1] / base_path).resolve(),
    )


def _check_no_anchor_settings(cfg: Config) -> None:
    """The anchor-free head uses no anchors: anchor settings that differ from base.yaml's (which
    every config inherits) were meant for another head, and silently ignoring them would hide
    that."""
    base_model, base_loss = base_section(ModelConfig), base_section(LossConfig)
    given = ["model.anchors"] if not _same_file(cfg.model.anchors, base_model.anchors) else []
    given += [
        f"model.{key}" for key in ("anchors_mask", "autoanchor")
        if getattr(cfg.model, key) != getattr(base_model, key)
    ] + [
        f"loss.{key}" for key in ("assign", "anchor_thresh", "ignore_thresh", "obj_iou_ratio")
        if getattr(cfg.loss, key) != getattr(base_loss, key)
    ]  # fmt: skip
    if given:
        raise ConfigError(
            f"{', '.join(given)}: model.head anchor_free uses no anchors; remove "
            f"{'these settings' if len(given) > 1 else 'this setting'} or set "
            "model.head: anchor_based"
        )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def from_dict(data: dict[str, Any], *, name: str, source: str = "config") -> Config:
    """Validate a resolved mapping into a :class:`Config` (``name`` unless the data has one)."""
    data = dict(data)
    data.setdefault("name", name)
    try:
        cfg = _build(Config, data, "")
        _check(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, inherit, override and validate the config at ``path``."""
    path = Path(path)
    data = apply_overrides(load_raw(path), list(overrides or []))
    return from_dict(data, name=path.stem, source=str(path))


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a run folder's resolved ``config.yaml`` (see ``RunDir``) with ``overrides``.

    Settings added to the project after the run was made take their ``base.yaml`` defaults, so
    run folders written by older versions still load for ``--resume``, predict and get_map.
    """
    path = Path(path)
    data = _deep_merge(_read_yaml(BASE_CONFIG), _read_yaml(path))
    return from_dict(
        apply_overrides(data, list(overrides or [])), name=path.parent.name, source=str(path)
    )


Section = TypeVar("Section")


def base_section(section: type[Section], **changes: Any) -> Section:
    """One section of ``configs/base.yaml`` with ``changes``, e.g. ``base_section(AugmentConfig,
    mosaic=1.0)``: for code that needs a section without a whole config (tools, tests)."""
    name = next(key for key, tp in typing.get_type_hints(Config).items() if tp is section)
    return dataclasses.replace(_build(section, _read_yaml(BASE_CONFIG)[name], name), **changes)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (no ``_base_``): ``load_config(path) == cfg``."""
    path = Path(path)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def class_names(cfg: Config) -> list[str]:
    """The class list of ``cfg``, read through the VOC layer's checks."""
    from utils.data.index import read_class_names

    return read_class_names(Path(cfg.data.classes))


def anchors(cfg: Config) -> list[list[float]]:
    return read_anchors(cfg.model.anchors)


def num_classes(cfg: Config) -> int:
    return len(class_names(cfg))
