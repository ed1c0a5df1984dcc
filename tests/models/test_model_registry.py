"""The model registry: every built-in is an entry with its declared facts; plugins are accepted by name."""

from importlib import metadata
from pathlib import Path

import pytest
import torch

from samft.archs import ARCHS
from samft.models import build_model, spec_of
from samft.registry import MODELS


def test_every_model_of_the_light_table_is_a_registry_entry():
    assert set(MODELS.names()) == set(ARCHS)
    for name in ARCHS:
        spec = MODELS.get(name)
        assert spec.name == name and spec.parts == ("image_encoder", "prompt_encoder", "mask_decoder")
        if ARCHS[name].release:
            assert spec.release == ARCHS[name].release
    for fact in ("release", "parts", "decay_layer", "encoder_blocks", "peft_targets"):  # the call contract
        assert fact in MODELS.__doc__


@pytest.mark.parametrize("name, blocks, target", [
    ("vit_tiny", 2, "image_encoder.blocks.0.attn.qkv"),
    ("vit_t", 12, "image_encoder.layers.1.blocks.0.attn.qkv"),
    ("hq_vit_tiny", 2, "image_encoder.blocks.1.attn.qkv"),
])
def test_declared_blocks_and_peft_targets_exist(name, blocks, target):
    import fnmatch

    model = build_model(name, 64)
    spec = spec_of(model)
    assert spec is MODELS.get(name) and len(spec.encoder_blocks(model)) == blocks
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              and any(fnmatch.fnmatchcase(n, p) for p in spec.peft_targets)]
    assert target in linear and len(linear) == (blocks if name != "vit_t" else 10)  # stage 0 has no attention


def test_a_model_from_segment_anything_gets_the_vit_rules():
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        assert spec_of(sam_model_registry["vit_b"]()).name == "vit_b"


def test_a_plugin_model_name_passes_config_validation_without_importing_it(monkeypatch):
    from samft import config

    plugin = metadata.EntryPoint(name="my_sam", value="my_pkg.models:my_sam", group="samft.models")
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points",
                        lambda **kw: [plugin] if kw.get("group") == "samft.models" else real(**kw))
    assert MODELS.plugin_names() == ["my_sam"]  # listed; my_pkg does not exist, so nothing was imported
    monkeypatch.setitem(config.RULES, "model.name", config._model_name_rule())  # as when samft.config loads
    sam_ft = Path(__file__).resolve().parents[2] / "configs" / "sam_ft.yaml"
    cfg = config.load(sam_ft, ["model.name=my_sam", "model.image_size=512"])  # its size is checked when built
    assert cfg.model.name == "my_sam"
    with pytest.raises(config.ConfigError, match="model.name=my_samm: use one of vit_b, .*, my_sam .*'my_sam'"):
        config.load(sam_ft, ["model.name=my_samm"])
