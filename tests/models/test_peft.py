"""PEFT methods: exact no-op at step 0, LoRA against a hand-built reference, merging, what trains."""

import math

import pytest
import torch
from segment_anything import sam_model_registry
from torch.nn import functional as F

from samft.checks import OptionError
from samft.export import export_sam
from samft.models import (
    PeftError,
    apply_peft,
    build_model,
    checkpoint_activations,
    merge_peft,
    parameter_counts,
    trainable_state,
)
from samft.models.peft import base_identity, weights_sha256
from samft.registry import PEFT

SPECS = {
    "lora_qv": {"name": "lora"},
    "lora_all": {"name": "lora", "rank": 2, "alpha": 8, "targets": ["qkv", "proj", "mlp", "decoder"]},
    "lora_k_block1": {"name": "lora", "targets": ["k"], "blocks": [1]},
    "adaptformer": {"name": "adaptformer", "bottleneck": 8},
    "ssf": {"name": "ssf"},
    "bias": {"name": "bias", "parts": ["image_encoder", "mask_decoder"]},
    "norm": {"name": "norm"},
    "attention": {"name": "attention", "blocks": [0]},
}


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_model("vit_tiny", 64).eval()


def sam_outputs(model, seed=1):
    """Sam.forward (segment_anything's own, no grad) on a random image with a point and a box."""
    g = torch.Generator().manual_seed(seed)
    batch = [{"image": torch.rand(3, 48, 64, generator=g) * 255, "original_size": (48, 64),
              "point_coords": torch.tensor([[[20.0, 30.0]]]), "point_labels": torch.tensor([[1]]),
              "boxes": torch.tensor([[5.0, 6.0, 40.0, 30.0]])}]
    out = model(batch, multimask_output=True)[0]
    return out["low_res_logits"], out["iou_predictions"]


def perturb_trainables(model, seed=2, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("key", SPECS)
def test_step_0_outputs_equal_the_base_model_exactly(key):
    base = tiny()
    reference = sam_outputs(base)
    apply_peft(base, SPECS[key])
    for ours, theirs in zip(sam_outputs(base), reference):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("key", ["lora_qv", "ssf", "adaptformer"])
def test_step_0_is_exact_under_bf16_autocast_too(key):
    base = tiny()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = base.image_encoder(x)
        apply_peft(base, SPECS[key])
        assert torch.equal(base.image_encoder(x), reference)


def test_activation_checkpointing_gives_lora_the_same_gradients():
    grads = []
    for checkpointed in (False, True):
        model = tiny()
        apply_peft(model, {"name": "lora", "dropout": 0.1, "targets": ["q", "v", "mlp"]})
        perturb_trainables(model)
        model.train()
        if checkpointed:
            checkpoint_activations(model)
        torch.manual_seed(3)  # the same dropout masks; checkpoint replays them in the recomputation
        image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
        model.image_encoder(image).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if ".lora." in n})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def test_lora_on_q_and_v_equals_a_hand_built_weight_update():
    """q and v rows of the fused qkv get W + (alpha / r) B A; the k rows stay the base's."""
    model = tiny()
    qkv = model.image_encoder.blocks[0].attn.qkv
    weight, bias, c = qkv.weight.detach().clone(), qkv.bias.detach().clone(), qkv.in_features
    apply_peft(model, {"name": "lora", "rank": 3, "alpha": 6})
    perturb_trainables(model, std=0.3)
    a, b = qkv.lora.a, qkv.lora.b
    expected = weight.clone()
    expected[:c] += 2.0 * b["q"].detach() @ a["q"].detach()
    expected[2 * c:] += 2.0 * b["v"].detach() @ a["v"].detach()
    x = torch.randn(2, 5, c)
    got = qkv(x)
    torch.testing.assert_close(got, F.linear(x, expected, bias), rtol=1e-5, atol=1e-5)
    assert torch.equal(got[..., c:2 * c], F.linear(x, weight, bias)[..., c:2 * c])
    assert a["q"].shape == (3, c) and b["v"].shape == (c, 3)


def test_only_the_method_s_parameters_and_the_other_parts_train():
    model = tiny()
    apply_peft(model, {"name": "lora", "targets": ["q", "v"], "blocks": [1]})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    encoder = {n for n in trainable if n.startswith("image_encoder.")}
    assert encoder == {f"image_encoder.blocks.1.attn.qkv.lora.{m}.{s}" for m in "ab" for s in "qv"}
    assert {n for n in trainable if not n.startswith("image_encoder.")} == {
        n for n, _ in model.named_parameters() if n.startswith(("prompt_encoder.", "mask_decoder."))}
    assert set(trainable_state(model)) == trainable
    counted, total = parameter_counts(model)
    assert counted == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert total == sum(p.numel() for p in model.parameters())

    decoder_only = tiny()
    apply_peft(decoder_only, {"name": "lora", "targets": ["decoder"]})
    assert all(p.requires_grad for p in decoder_only.image_encoder.parameters())  # not adapted: the flags decide
    assert {n.split(".lora")[0] for n, p in decoder_only.named_parameters() if p.requires_grad and "lora" in n} == {
        f"mask_decoder.transformer.{n}" for n, m in decoder_only.mask_decoder.transformer.named_modules()
        if isinstance(m, torch.nn.Linear)}
    assert not any(p.requires_grad for n, p in decoder_only.mask_decoder.named_parameters() if "lora" not in n)


@pytest.mark.parametrize("key, trains", [
    ("bias", lambda n: n.endswith("bias") and n.startswith(("image_encoder.", "mask_decoder."))),
    ("norm", lambda n: n.startswith("image_encoder.") and ("norm" in n or n.split(".")[1:3] in (["neck", "1"],
                                                                                            ["neck", "3"]))),
    ("attention", lambda n: n.startswith("image_encoder.blocks.0.attn.")),
])
def test_selection_methods_train_exactly_their_tensors(key, trains):
    model = tiny()
    apply_peft(model, SPECS[key])
    for name, param in model.named_parameters():
        expected = trains(name) or name.startswith("prompt_encoder.") or (
            key != "bias" and name.startswith("mask_decoder."))
        assert param.requires_grad == expected, name


@pytest.mark.parametrize("key", [k for k in SPECS if k != "adaptformer"])
def test_merged_model_equals_the_adapted_one_and_has_sam_s_keys(key):
    model = tiny()
    apply_peft(model, SPECS[key])
    perturb_trainables(model)
    adapted = sam_outputs(model)
    merge_peft(model)
    assert list(model.state_dict()) == list(build_model("vit_tiny", 64).state_dict())
    assert not model.image_encoder.blocks[0].attn.qkv._forward_hooks  # the hooks are gone with the adapters
    for ours, theirs in zip(sam_outputs(model), adapted):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_adaptformer_cannot_be_merged():
    model = tiny()
    apply_peft(model, SPECS["adaptformer"])
    with pytest.raises(PeftError, match="cannot be folded"):
        merge_peft(model)


def test_lora_merged_vit_b_loads_strictly_in_segment_anything(tmp_path):
    """A random ViT-B (no weights can be downloaded) with LoRA on q and v: merged and exported in Meta's
    layout, segment_anything's registry loads it strictly and holds exactly the merged weights."""
    torch.manual_seed(0)
    model = build_model("vit_b", 1024)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_peft(model, {"name": "lora", "rank": 4})
    perturb_trainables(model, std=0.01)
    lora = model.image_encoder.blocks[3].attn.qkv.lora
    delta = lora.delta_weight().float()
    merge_peft(model)
    export_sam(model, "vit_b", tmp_path / "merged.pth")
    sam = sam_model_registry["vit_b"](checkpoint=str(tmp_path / "merged.pth"))
    theirs = sam.state_dict()
    key = "image_encoder.blocks.3.attn.qkv.weight"
    torch.testing.assert_close(theirs[key], base[key] + delta, rtol=0, atol=1e-6)
    assert not torch.equal(theirs[key], base[key])
    proj = "image_encoder.blocks.3.attn.proj.weight"
    assert torch.equal(theirs[proj], base[proj])


def test_options_are_checked_with_the_option_named():
    for options, fragment in [
        ({"rank": 0}, "rank must be a whole number >= 1"), ({"alpha": math.inf}, "alpha must be a number > 0"),
        ({"dropout": 1.0}, "dropout must be a number in [0, 1)"), ({"targets": ["qv"]}, "targets names 'qv'"),
        ({"targets": ["q", "qkv"]}, "targets names qkv and some of q, k, v"), ({"blocks": [-1]}, "blocks must be"),
    ]:
        with pytest.raises(OptionError, match=fragment.replace("[", r"\[").replace(")", r"\)")) as err:
            PEFT.build({"name": "lora", **options})
        assert err.value.option == next(iter(options))
    with pytest.raises(PeftError, match="blocks names block 2, but the image encoder has 2 blocks"):
        apply_peft(tiny(), {"name": "ssf", "blocks": [2]})
    with pytest.raises(PeftError, match="parts names 'neck': use a list of image_encoder, prompt_encoder"):
        apply_peft(tiny(), {"name": "bias", "parts": ["neck"]})  # the model's entry says which parts it has
    with pytest.raises(OptionError, match="parts must be a list"):
        PEFT.build({"name": "bias", "parts": []})


def test_applying_twice_is_refused():
    model = tiny()
    apply_peft(model, {"name": "lora"})
    with pytest.raises(PeftError, match="applied twice"):
        PEFT.build({"name": "lora"}).apply(model)


def test_weights_sha256_depends_on_values_not_key_order():
    state = tiny().state_dict()
    assert weights_sha256(dict(reversed(list(state.items())))) == weights_sha256(state)
    changed = dict(state)
    key = next(iter(changed))
    changed[key] = changed[key].clone()
    changed[key].view(-1)[0] += 1e-3
    assert weights_sha256(changed) != weights_sha256(state)


def test_methods_apply_to_a_model_on_the_meta_device():
    """The memory planner builds models without values: PEFT applies there too."""
    with torch.device("meta"):
        model = build_model("vit_tiny", 64)
    from samft.models.peft import base_identity

    assert base_identity(model, None, 0)["sha256"] is None
    for spec in SPECS.values():
        with torch.device("meta"):
            model = build_model("vit_tiny", 64)
        apply_peft(model, spec)
        assert all(p.is_meta for p in model.parameters())


def test_the_lora_preset_trains_what_the_readme_says_on_vit_b():
    """configs/sam_ft_lora.yaml on ViT-B (built on the meta device: counts need no values)."""
    from pathlib import Path

    from samft.config import load
    from samft.engine.build import model_from_config

    cfg = load(Path(__file__).resolve().parents[2] / "configs" / "sam_ft_lora.yaml")
    with torch.device("meta"):
        model = model_from_config(cfg, Path.cwd())
    assert parameter_counts(model) == (4_205_796, 93_882_928)  # the README's numbers
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"image_encoder", "mask_decoder"}
    assert all(".lora." in n for n, p in model.image_encoder.named_parameters() if p.requires_grad)


def test_base_identity_of_an_encoder_with_batchnorm_counters():
    """MobileSAM's TinyViT keeps 0-d integer BatchNorm counters: they hash like any other tensor."""

    state = {"bn.num_batches_tracked": torch.tensor(3), "w": torch.ones(2)}
    changed = {"bn.num_batches_tracked": torch.tensor(4), "w": torch.ones(2)}
    assert weights_sha256(state) != weights_sha256(changed)
    model = build_model("vit_t", 256)
    apply_peft(model, {"name": "lora", "rank": 2, "targets": ["decoder"]})
    assert len(base_identity(model, None, 0)["sha256"]) == 64
    with pytest.raises(PeftError, match=r"TinyViT \(vit_t\) has no ViT blocks for adaptformer"):
        apply_peft(build_model("vit_t", 256), {"name": "adaptformer"})
