"""configs/base.yaml is the one source of every setting: no default written in code disagrees
with it, components built from a config section declare none of its defaults, and each list of
allowed values is the config's."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

import nets
import utils
from nets.losses import YoloLoss
from nets.necks import NECK_CONVS
from nets.registry import NECKS
from utils.boxes import ASSIGN_MODES
from utils.config import (
    BASE_CONFIG,
    AssignMode,
    AugmentConfig,
    DataConfig,
    DataFormat,
    DemoPreset,
    DistributeMode,
    LossConfig,
    ModelConfig,
    NeckConv,
    TrainConfig,
)
from utils.data.demo import DEMO_PRESETS
from utils.data.formats import FORMATS
from utils.engine.callbacks import SpecialAugSwitch
from utils.engine.distribute import DISTRIBUTE_MODES
from utils.engine.ema import ModelEMA

# Keyword defaults that share a setting's name but mean something else (where: why).
OTHER_MEANINGS = {
    "utils.deploy.draw.heatmap_overlay.alpha": "the overlay's opacity, not a width multiplier",
    "utils.data.augment.mosaic.min_box_size": "the bare transform keeps every box",
    "utils.data.pipeline.build_dataset.use_difficult": "evaluation keeps difficult boxes",
    "utils.data.pipeline.SampleTable.from_samples.use_difficult": "the same, one level down",
    "utils.data.demo.generate_demo_dataset.seed": "the demo dataset's own seed",
    "utils.data.demo.ensure_demo_dataset.seed": "the demo dataset's own seed",
}


def _base_settings() -> dict[str, list[Any]]:
    """Each setting's name -> its base.yaml values (names of backbone/neck options included)."""
    settings: dict[str, list[Any]] = {}

    def walk(section: dict[str, Any]) -> None:
        for name, value in section.items():
            settings.setdefault(name, []).append(value)
            if isinstance(value, dict):
                walk(value)

    walk(yaml.safe_load(BASE_CONFIG.read_text(encoding="utf-8")))
    return settings


def _functions(module) -> Iterator[tuple[str, Callable]]:
    """The functions and methods defined in ``module``, with dotted names."""
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj):
            for method_name, method in vars(obj).items():
                if isinstance(method, classmethod | staticmethod):
                    method = method.__func__
                if inspect.isfunction(method):
                    yield f"{module.__name__}.{name}.{method_name}", method


def _code_defaults() -> Iterator[tuple[str, str, Any]]:
    """(where, name, default) of every keyword default in nets/ and utils/ named like a setting.

    None is skipped: it means "not given here", the caller or the builder decides.
    """
    settings = _base_settings()
    for package in (nets, utils):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            for where, function in _functions(importlib.import_module(info.name)):
                for parameter in inspect.signature(function).parameters.values():
                    default = parameter.default
                    if default is parameter.empty or default is None:
                        continue
                    if parameter.name in settings:
                        yield where, parameter.name, default


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_no_code_default_disagrees_with_base_yaml():
    settings = _base_settings()
    disagree = [
        f"{where}: {name}={default!r}, base.yaml: {settings[name]}"
        for where, name, default in _code_defaults()
        if f"{where}.{name}" not in OTHER_MEANINGS and _plain(default) not in settings[name]
    ]
    assert not disagree, "\n".join(disagree)


def test_the_exceptions_still_exist():
    """An entry of OTHER_MEANINGS whose default is gone must go too."""
    found = {f"{where}.{name}" for where, name, _ in _code_defaults()}
    assert set(OTHER_MEANINGS) <= found


def test_every_neck_defaults_to_base_yaml_neck_conv():
    base = yaml.safe_load(BASE_CONFIG.read_text(encoding="utf-8"))["model"]["neck_conv"]
    for name in NECKS.names():
        assert inspect.signature(NECKS.get(name)).parameters["conv"].default == base, name


@pytest.mark.parametrize(
    ("component", "section"),
    [
        (YoloLoss.__init__, LossConfig),
        (SpecialAugSwitch.__init__, AugmentConfig),
        (ModelEMA.__init__, TrainConfig),
    ],
)
def test_components_built_from_a_section_declare_none_of_its_defaults(component, section):
    fields = set(typing.get_type_hints(section))
    parameters = inspect.signature(component).parameters.values()
    # names as in the section (YoloLoss) or with the section's prefix (ModelEMA's ema_decay)
    named = [p for p in parameters if p.name in fields or f"ema_{p.name}" in fields]
    assert named, "the component no longer takes settings of this section"
    assert [p.name for p in named if p.default is not inspect.Parameter.empty] == []


@pytest.mark.parametrize(
    ("values", "config_type", "field"),
    [
        (NECK_CONVS, NeckConv, (ModelConfig, "neck_conv")),
        (ASSIGN_MODES, AssignMode, (LossConfig, "assign")),
        (DISTRIBUTE_MODES, DistributeMode, (TrainConfig, "distribute")),
        (FORMATS, DataFormat, (DataConfig, "format")),
        (DEMO_PRESETS, DemoPreset, (DataConfig, "demo_preset")),
    ],
)
def test_allowed_values_are_the_configs(values, config_type, field):
    section, name = field
    assert typing.get_type_hints(section)[name] == config_type
    assert values == typing.get_args(config_type)
