"""SAM 2.1's registry entries where the sam2 package is not needed: config checks and the one-line error
when the package is missing (tests/models/test_sam2.py covers the model itself)."""

import sys
from pathlib import Path

import pytest

from samft.config import ConfigError, load
from samft.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def recipe(*overrides):
    return load(REPO / "configs" / "sam2_hiera_s_ft.yaml", list(overrides))


def test_recipe_is_sam2s():
    cfg = recipe()
    assert cfg.model.name == "sam2_1_hiera_s" and cfg.loss.name == "sam2" and cfg.loss.iou_loss == "l1"
    assert (cfg.prompts.correction_clicks, cfg.prompts.extra_rounds, cfg.prompts.round_loss) == (7, 0, "sum")
    assert dict(cfg.weighting.weights) == {"focal": 20.0, "dice": 1.0, "iou": 1.0, "object_score": 1.0}


@pytest.mark.parametrize(("override", "message"), [
    ("model.image_size=272", "model.image_size=272: use a multiple of 32"),
    ("model.name=vit_b", "loss: sam2 trains SAM 2's object-score head, which vit_b has not"),
    ("eval.everything.every=10", "eval.everything.every=10: segment-everything runs segment_anything's"),
    ("model.peft={name: lora, targets: [q, mlp]}", "on sam2_1_hiera_s .* use lora with targets from q, k, v"),
    ("model.peft={name: adaptformer}", "on sam2_1_hiera_s .* use lora"),
    ("model.peft={name: bias, blocks: [1]}", "bias / norm without blocks"),
])
def test_what_sam2_cannot_do_is_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        recipe(override)


@pytest.mark.parametrize("peft", ["{name: lora, targets: [q, v]}", "{name: lora, rank: 8, targets: [qkv, decoder]}",
                                  "{name: bias}", "{name: norm}"])
def test_peft_that_fits_hiera_is_accepted(peft):
    assert recipe(f"model.peft={peft}").model.peft.name in ("lora", "bias", "norm")


def test_missing_sam2_package_is_one_line(monkeypatch):
    import samft.models
    from samft.models import build_model

    # As if sam2 could not be imported (and no earlier test imported samft's module on top of it).
    monkeypatch.setitem(sys.modules, "samft.models.sam2_model", None)
    monkeypatch.delattr(samft.models, "sam2_model", raising=False)
    with pytest.raises(UserError, match="SAM 2.1 models need the sam2 package .*make setup-sam2"):
        build_model("sam2_1_hiera_t", 64)


@pytest.mark.parametrize("loss", ["{name: combined, terms: {obj: {name: object_score}}}",
                                  "{name: sam, extra_terms: {obj: {name: object_score}}}"])
def test_an_object_score_loss_nested_in_another_is_refused_at_load_for_sam(loss):
    with pytest.raises(ConfigError, match="loss: object_score trains SAM 2's object-score head, which vit_tiny has"):
        load(REPO / "configs" / "demo.yaml", [f"loss={loss}"])


def test_freezing_every_part_is_refused_at_load():  # SAM 2's no_mem_embed, outside the parts, does not count
    with pytest.raises(ConfigError, match="nothing of sam2_1_hiera_s would train"):
        recipe("model.freeze_image_encoder=true", "model.freeze_prompt_encoder=true", "model.freeze_mask_decoder=true")
