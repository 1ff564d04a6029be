"""Config loading: inheritance, overrides, typed validation, errors naming the key, round trip."""

from pathlib import Path

import pytest

from utils.config import (
    AugmentConfig,
    ConfigError,
    LossConfig,
    apply_overrides,
    base_section,
    load_config,
    load_raw,
    load_run_config,
    parse_override,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "base.yaml"
OLD_RUN_CONFIG = REPO / "tests" / "fixtures" / "old_run" / "config.yaml"


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # config paths are relative to the repository root


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def child(tmp_path: Path, body: str, name: str = "exp.yaml") -> Path:
    return write(tmp_path / name, f"_base_: {BASE}\n{body}")


def test_base_and_demo_load():
    base = load_config(BASE)
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert base.model.input_size == [416, 416]
    assert demo.model.input_size == [320, 320]
    assert demo.model.backbone_options == {"alpha": 0.5}
    assert demo.model.anchors_mask == base.model.anchors_mask  # inherited untouched
    assert demo.name == "demo"


def test_inheritance_list_relative_and_order(tmp_path):
    write(tmp_path / "a.yaml", "train: {epochs: 7, batch_size: 3}\n")
    write(tmp_path / "b.yaml", "train: {epochs: 9}\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    exp = write(sub / "exp.yaml", f"_base_: [{BASE}, ../a.yaml, ../b.yaml]\ntrain: {{seed: 5}}\n")
    cfg = load_config(exp)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (9, 3, 5)
    assert cfg.train.optimizer == "sgd"  # from base


def test_inheritance_cycle(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_raw(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("train.epochs=12", ["train", "epochs"], 12),
        ("train.init_lr=1e-3", ["train", "init_lr"], "1e-3"),  # YAML 1.1 string; coerced later
        ("train.init_lr=0.5", ["train", "init_lr"], 0.5),
        ("train.ema=false", ["train", "ema"], False),
        ("model.input_size=[320, 256]", ["model", "input_size"], [320, 256]),
        ("model.pretrained=null", ["model", "pretrained"], None),
        ("model.backbone=ghostnet", ["model", "backbone"], "ghostnet"),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


def test_overrides_applied_and_typed():
    cfg = load_config(
        BASE,
        [
            "train.init_lr=1e-3",
            "train.epochs=3",
            "model.input_size=[320,256]",
            "model.pretrained=null",
            "train.ema=false",
            "model.backbone_options.alpha=0.5",
        ],
    )
    assert cfg.train.init_lr == pytest.approx(1e-3) and isinstance(cfg.train.init_lr, float)
    assert cfg.train.epochs == 3
    assert cfg.model.input_size == [320, 256]
    assert cfg.model.pretrained is None
    assert cfg.train.ema is False
    assert cfg.model.backbone_options == {"alpha": 0.5}


def test_override_into_non_section():
    with pytest.raises(ConfigError, match=r"train\.epochs is not a section"):
        apply_overrides({"train": {"epochs": 1}}, ["train.epochs.x=2"])
    with pytest.raises(ConfigError, match=r"expected key\.sub=value"):
        parse_override("no-equals-sign")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epohcs=3", r"train\.epohcs: unknown key \(did you mean 'epochs'\?\)"),
        ("trian.epochs=3", r"trian: unknown key \(did you mean 'train'\?\)"),
        ("train.epochs=three", r"train\.epochs: expected int, got 'three'"),
        ("train.epochs=2.5", r"train\.epochs: expected int"),
        ("train.ema=1", r"train\.ema: expected bool"),
        ("train.optimizer=rmsprop", r"train\.optimizer: expected 'sgd' \| 'adam'"),
        ("model.input_size=[320,300]", r"model\.input_size: .*multiples of 32"),
        ("model.anchors_mask=[[0,1],[2,3],[4,5]]", r"model\.anchors_mask: .*9 anchors"),
        ("data.classes=nope/none.txt", r"data\.classes: file not found: nope/none.txt"),
        ("model.anchors=nope.txt", r"model\.anchors: file not found"),
        ("train.freeze_epochs=-1", r"train\.freeze_epochs: must be at least 0"),
        ("augment.mosaic=1.5", r"augment\.mosaic: must be within"),
        ("augment.multi_scale=1.0", r"augment\.multi_scale: must be within \[0, 1\), got 1.0"),
        ("augment.multi_scale=-0.2", r"augment\.multi_scale: must be within"),
        ("augment.scale=[0.5]", r"augment\.scale: need \[min, max\]"),
        ("augment.mosaic_scale=[1.0,0.4]", r"augment\.mosaic_scale: need \[min, max\]"),
        ("loss.obj_iou_ratio=-0.1", r"loss\.obj_iou_ratio: must be within"),
        ("model.input_size=oops", r"model\.input_size: expected list\[int\]"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(BASE, [override])
    assert "\n" not in str(info.value)
    assert str(BASE) in str(info.value)  # names the file too


def test_missing_key_without_base(tmp_path):
    path = write(tmp_path / "lonely.yaml", "model: {backbone: mobilenetv1}\n")
    with pytest.raises(ConfigError, match=r"model\.backbone_options: missing .*_base_"):
        load_config(path)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_anchor_file_errors(tmp_path):
    odd = write(tmp_path / "odd.txt", "10,13, 16")
    with pytest.raises(ConfigError, match="even count"):
        load_config(BASE, [f"model.anchors={odd}"])


def test_round_trip(tmp_path):
    cfg = load_config(child(tmp_path, "train: {epochs: 11, init_lr: 2e-3}\n"), ["loss.assign=best"])
    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    save_config(cfg, saved)
    again = load_config(saved)
    assert again == cfg
    assert again.name == "exp"
    assert "_base_" not in saved.read_text()


def test_an_old_run_config_loads_with_the_newer_settings_from_base():
    """A run folder's config.yaml from before model.head and augment.mosaic_scale (commit
    bcb70c3) still loads."""
    with pytest.raises(ConfigError, match=r"model\.head: missing"):
        load_config(OLD_RUN_CONFIG)
    cfg = load_run_config(OLD_RUN_CONFIG, ["train.epochs=3"])
    assert cfg.augment.mosaic_scale == load_config(BASE).augment.mosaic_scale
    assert cfg.augment.scale == [0.5, 1.5]  # the run's own settings win
    assert (cfg.train.epochs, cfg.name) == (3, "demo")


def test_base_section_is_base_yaml_with_changes():
    base = load_config(BASE)
    assert base_section(AugmentConfig) == base.augment
    assert base_section(LossConfig) == base.loss
    assert base_section(AugmentConfig, mosaic=1.0).mosaic == 1.0


def test_every_base_key_has_a_comment():
    """Every default in base.yaml says what it is for (a comment on its line or just above)."""
    lines = BASE.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        is_value = not stripped.endswith(":") or "#" in stripped
        if is_value and "#" not in line:
            # allowed when it belongs to a commented group (e.g. hue/sat/val)
            above = [entry for entry in lines[max(0, i - 3) : i] if entry.strip()]
            assert any("#" in entry for entry in above), f"base.yaml line {i + 1} lacks a comment"
