"""PEFT and freezing read the model's registry entry: its parts, encoder blocks, peft_targets and qkv_rows."""

import pytest
import torch
from torch.nn import functional as F

from samft.archs import ARCHS
from samft.models import PeftError, apply_peft, build_model, freeze, merge_peft
from samft.models.zoo import ModelSpec, build_vit_sam, vit_blocks, vit_decay_layer
from samft.registry import MODELS


def _odd_rows(model, name):
    """A made-up layout, to see that LoRA takes the rows from the entry: q = rows 0-7, v = rows 100-107."""
    return {"q": [(0, 8)], "k": [(8, 16)], "v": [(100, 108)]}


@pytest.fixture
def third_party(monkeypatch):
    """A plugin entry: vit_tiny's modules, PEFT only on block 1's qkv, and no freezable prompt encoder."""
    spec = ModelSpec(name="my_sam", build=lambda size: build_vit_sam(ARCHS["vit_tiny"], size), release="mine",
                     encoder_blocks=vit_blocks, decay_layer=vit_decay_layer,
                     peft_targets=("image_encoder.blocks.1.attn.qkv",), qkv_rows=_odd_rows,
                     parts=("image_encoder", "mask_decoder"))
    MODELS.names()  # the built-ins first, so the fixture's entry is added to them
    monkeypatch.setitem(MODELS._entries, "my_sam", spec)
    return spec


def test_lora_wraps_the_entrys_targets_at_the_entrys_rows(third_party):
    model = build_model("my_sam", 64)
    apply_peft(model, {"name": "lora", "rank": 2})
    wrapped = {n.split(".lora.")[0] for n, _ in model.named_parameters() if ".lora." in n}
    assert wrapped == {"image_encoder.blocks.1.attn.qkv"}  # not block 0's, which vit_tiny's entry adapts
    lora = model.image_encoder.blocks[1].attn.qkv.lora
    assert lora.slices == {"q": (0, 8), "v": (100, 108)} and lora.b["q"].shape == (8, 2)
    with torch.no_grad():
        lora.b["q"].normal_()
        lora.b["v"].normal_()
    changed = lora.delta_weight().abs().sum(1).nonzero().flatten().tolist()
    assert changed == list(range(8)) + list(range(100, 108))


def test_freezing_and_selection_follow_the_entrys_parts(third_party):
    model = build_model("my_sam", 64)
    with pytest.raises(ValueError, match="model.freeze_prompt_encoder=true: my_sam has no part prompt_encoder"):
        freeze(model, prompt_encoder=True)
    # Not a part: it trains whatever is frozen, so freezing both parts still leaves something to train.
    freeze(model, image_encoder=True, mask_decoder=True)
    assert all(p.requires_grad for p in model.prompt_encoder.parameters())
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    with pytest.raises(PeftError, match="model.peft \\(my_sam\\): parts names 'prompt_encoder': use a list of "
                                        "image_encoder, mask_decoder"):
        apply_peft(build_model("my_sam", 64), {"name": "bias", "parts": ["prompt_encoder"]})


def test_a_target_outside_the_chosen_blocks_is_refused_in_one_line(third_party):
    with pytest.raises(PeftError, match="my_sam's peft_targets .* match no Linear in blocks \\[0\\]"):
        apply_peft(build_model("my_sam", 64), {"name": "lora", "blocks": [0]})


def test_lora_on_mobile_sams_per_head_q_and_v():
    """TinyViT packs q, k, v per head: LoRA's q update must reach exactly each head's q, by the
    attention's own split, and merging folds it into the same rows."""
    torch.manual_seed(0)
    model = build_model("vit_t", 64).eval()
    apply_peft(model, {"name": "lora", "rank": 2, "alpha": 4})
    qkv_layers = [n for n, m in model.named_modules() if n.endswith("attn.qkv") and isinstance(m, torch.nn.Linear)]
    assert len(qkv_layers) == 10 and all(model.get_submodule(n).lora.slices.keys() == {"q", "v"} for n in qkv_layers)
    attn = model.image_encoder.layers[1].blocks[0].attn
    lora, heads, d = attn.qkv.lora, attn.heads, attn.head_dim
    with torch.no_grad():
        for p in lora.b.values():
            p.normal_()
    x = torch.randn(5, attn.qkv.in_features)
    plain = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(5, heads, 3, d)
    adapted = attn.qkv(x).view(5, heads, 3, d)
    for i, t in enumerate("qkv"):  # hand-built: x A^T B^T * alpha / rank, B's rows head by head
        expected = (x @ lora.a[t].T @ lora.b[t].T * 2).view(5, heads, d) if t in "qv" else torch.zeros(5, heads, d)
        torch.testing.assert_close(adapted[:, :, i] - plain[:, :, i], expected, atol=1e-5, rtol=1e-5)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model.image_encoder(images)
        merge_peft(model)
        after = model.image_encoder(images)
    assert not any(".lora." in n for n, _ in model.named_parameters())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_blocks_and_attention_count_mobile_sams_encoder_blocks():
    """vit_t's 12 encoder blocks: 0-1 are MBConv (no attention), 2-11 TinyViT blocks."""
    model = build_model("vit_t", 64)
    apply_peft(model, {"name": "attention", "blocks": [2]})
    trained = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("image_encoder.")}
    assert trained == {f"image_encoder.layers.1.blocks.0.attn.{n}"
                       for n in ("norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias",
                                 "attention_biases")}
    model = build_model("vit_t", 64)
    apply_peft(model, {"name": "bias", "blocks": [0]})
    trained = {n for n, p in model.named_parameters() if p.requires_grad and ".blocks." in n}
    assert trained and all(n.startswith("image_encoder.layers.0.blocks.0.") for n in trained)
    # Parameters in no block (stem, patch merging, neck) train, as a ViT's neck does.
    assert model.image_encoder.layers[0].downsample.conv1.bn.bias.requires_grad
    with pytest.raises(PeftError, match="match no Linear in blocks \\[0, 1\\]"):
        apply_peft(build_model("vit_t", 64), {"name": "lora", "blocks": [0, 1]})
