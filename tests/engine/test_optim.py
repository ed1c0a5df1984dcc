"""Parameter groups: no weight decay on biases and norms, encoder lr, layer-wise lr decay."""

import pytest

from samft.engine.optim import param_groups
from samft.models import build_model, freeze


@pytest.fixture(scope="module")
def model():
    return build_model("vit_tiny", 64)  # 2 encoder blocks


def lr_of(groups, param):
    return [g["lr"] for g in groups if any(p is param for p in g["params"])]


def test_every_trainable_parameter_in_exactly_one_group(model):
    groups = param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)


def test_no_weight_decay_on_biases_and_norms(model):
    groups = param_groups(model, lr=1.0, weight_decay=0.1)
    for name, p in model.named_parameters():
        group = next(g for g in groups if any(q is p for q in g["params"]))
        expected = 0.0 if (p.ndim <= 1 or name.endswith(".bias")) else 0.1
        assert group["weight_decay"] == expected, name


def test_layer_wise_decay_and_encoder_lr(model):
    enc = model.image_encoder
    groups = param_groups(model, lr=1e-3, weight_decay=0.0, encoder_lr=1e-4, layer_decay=0.5)
    # depth 2: neck x 1, block 1 x 0.5, block 0 x 0.25, patch embedding x 0.125
    assert lr_of(groups, enc.neck[0].weight) == [1e-4]
    assert lr_of(groups, enc.blocks[1].attn.qkv.weight) == [0.5e-4]
    assert lr_of(groups, enc.blocks[0].attn.qkv.weight) == [0.25e-4]
    assert lr_of(groups, enc.patch_embed.proj.weight) == [0.125e-4]
    assert lr_of(groups, enc.pos_embed) == [0.125e-4]
    assert lr_of(groups, model.mask_decoder.iou_token.weight) == [1e-3]


def test_without_decay_the_encoder_is_one_group(model):
    names = [g["name"] for g in param_groups(model, lr=1.0, weight_decay=0.1)]
    assert sorted(names) == ["decoder", "decoder_no_decay", "encoder", "encoder_no_decay"]


def test_frozen_parts_are_left_out_and_all_frozen_is_an_error():
    m = build_model("vit_tiny", 64)
    freeze(m, image_encoder=True)
    groups = param_groups(m, lr=1.0, weight_decay=0.1)
    assert all(not n.startswith("encoder") for n in (g["name"] for g in groups))
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(m, lr=1.0, weight_decay=0.1)
