"""Config loading: overrides, inheritance, typed validation and plugin-option checks."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from samft.config import ConfigError, load, to_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_recipe_config_holds_sams_recipe():
    cfg = load(CONFIGS / "sam_ft.yaml")
    assert cfg.weighting.weights == {"focal": 20.0, "dice": 1.0, "iou": 1.0}
    assert cfg.loss.focal_alpha == 0.25 and cfg.loss.focal_gamma == 2.0
    assert cfg.data.max_masks == 64 and cfg.data.max_area_frac == 0.9
    assert cfg.optim.lr == 8e-4 and cfg.schedule.warmup_steps == 250
    # milestones follow train.steps through the frac resolver: 2/3 and ~96% of training
    assert list(cfg.schedule.after.milestones) == [60003, 86670]


def test_overrides_change_values_and_resolved_interpolations():
    cfg = load(CONFIGS / "sam_ft.yaml", ["train.steps=300", "optim.lr=1e-4", "loss.iou_loss=l1"])
    assert cfg.train.steps == 300 and cfg.optim.lr == 1e-4 and cfg.loss.iou_loss == "l1"
    assert list(cfg.schedule.after.milestones) == [200, 289]


def test_demo_inherits_from_recipe():
    cfg = load(CONFIGS / "demo.yaml")
    assert cfg.model.name == "vit_tiny" and cfg.model.image_size == 128
    assert cfg.loss.name == "sam" and cfg.optim.betas == [0.9, 0.999]  # inherited
    assert cfg.schedule.warmup_steps == 10 and cfg.schedule.after.name == "step"  # deep-merged


def test_inheritance_chain_is_relative_to_each_file(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    write(tmp_path / "root.yaml", f"base: {CONFIGS / 'sam_ft.yaml'}\ntrain: {{steps: 7}}\n")
    child = write(sub / "child.yaml", "base: ../root.yaml\ntrain: {seed: 3}\n")
    cfg = load(child)
    assert (cfg.train.steps, cfg.train.seed, cfg.model.name) == (7, 3, "vit_b")


def test_renaming_a_plugin_drops_the_old_plugins_options(tmp_path):
    child = write(tmp_path / "c.yaml", f"base: {CONFIGS / 'sam_ft.yaml'}\nschedule: {{name: cosine, start: 1.0, "
                  "end: 0.0, total_steps: 100}\n")
    cfg = load(child)
    assert dict(cfg.schedule) == {"name": "cosine", "start": 1.0, "end": 0.0, "total_steps": 100}
    cfg = load(CONFIGS / "sam_ft.yaml", ["schedule.after={name: cosine, start: 1.0, end: 0.0, total_steps: 9}"])
    assert cfg.schedule.warmup_steps == 250 and "milestones" not in cfg.schedule.after


def test_inheritance_loop_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load(tmp_path / "a.yaml")


def test_unknown_key_names_dotted_key_and_suggests():
    with pytest.raises(ConfigError) as err:
        load(CONFIGS / "sam_ft.yaml", ["train.stpes=10"])
    message = str(err.value)
    assert "'train.stpes'" in message and "Did you mean 'steps'?" in message
    assert "command-line overrides" in message


def test_unknown_key_in_file_names_the_file(tmp_path):
    cfg_file = write(tmp_path / "bad.yaml", "base: %s\nmodel:\n  nme: vit_l\n" % (CONFIGS / "sam_ft.yaml"))
    with pytest.raises(ConfigError) as err:
        load(cfg_file)
    assert "'model.nme'" in str(err.value) and str(cfg_file) in str(err.value)
    assert "Did you mean 'name'?" in str(err.value)


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match=r"'trian'.*Did you mean 'train'"):
        load(CONFIGS / "sam_ft.yaml", ["trian.steps=1"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.steps.*'many'"):
        load(CONFIGS / "sam_ft.yaml", ["train.steps=many"])


def test_unknown_plugin_and_option_are_rejected_with_suggestions():
    with pytest.raises(ConfigError, match=r"^loss.name=dcie: Unknown loss 'dcie'.*Did you mean 'dice'\?"):
        load(CONFIGS / "sam_ft.yaml", ["loss={name: dcie}"])
    with pytest.raises(ConfigError, match=r"^loss.focal_gama=3: .*no option 'focal_gama'.*Did you mean 'focal_gamma'"):
        load(CONFIGS / "sam_ft.yaml", ["loss.focal_gama=3"])


def test_malformed_override_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load(CONFIGS / "sam_ft.yaml", ["train.steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def test_config_is_read_only_and_round_trips_through_yaml(tmp_path):
    cfg = load(CONFIGS / "demo.yaml", ["train.steps=12"])
    with pytest.raises(ReadonlyConfigError):
        cfg.train.steps = 5
    saved = write(tmp_path / "saved.yaml", to_yaml(cfg))
    again = load(saved)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
