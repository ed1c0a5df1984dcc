"""SAM builders, checkpoint loading, freezing and the differentiable forward pass."""

import pytest
import torch

from samft.errors import UserError
from samft.models import (
    CheckpointError,
    build_model,
    decode_masks,
    embed_prompts,
    freeze,
    load_weights,
    output_candidates,
    preprocess,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("vit_tiny", 128).eval()


@pytest.mark.parametrize("name, params", [("vit_b", 93_735_472), ("vit_l", 312_342_832), ("vit_h", 641_090_608)])
def test_released_architectures_match_segment_anything(name, params):
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # shapes only: no memory, no time
        ours = build_model(name)
        theirs = sam_model_registry[name]()
    assert sum(p.numel() for p in ours.parameters()) == params
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_released_architectures_refuse_other_input_sizes():
    with pytest.raises(ValueError, match="image_size=512 does not fit vit_b"):
        build_model("vit_b", 512)
    with pytest.raises(ValueError, match=r"Did you mean 'vit_b'"):
        build_model("vit_bb")


def test_forward_matches_sam_forward(tiny):
    """Our batched, differentiable path gives exactly what segment_anything's Sam.forward gives."""
    torch.manual_seed(1)
    h, w = 96, 128  # a landscape image resized to the 128 input: padded at the bottom
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    points = torch.tensor([[[20.0, 30.0]], [[100.0, 50.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    theirs = tiny([{"image": image.float(), "original_size": (h, w), "point_coords": points,
                    "point_labels": labels}], multimask_output=True)[0]
    padded = torch.zeros(1, 3, 128, 128, dtype=torch.uint8)
    padded[:, :, :h, :w] = image
    valid = torch.zeros(1, 128, 128, dtype=torch.bool)
    valid[:, :h, :w] = True
    with torch.no_grad():
        embeddings = tiny.image_encoder(preprocess(tiny, padded, valid))
        logits, iou = decode_masks(tiny, embeddings, torch.zeros(2, dtype=torch.long), points, labels)
    torch.testing.assert_close(logits[:, 1:], theirs["low_res_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou[:, 1:], theirs["iou_predictions"], atol=1e-5, rtol=1e-5)


def test_box_prompts_embed_like_sams_prompt_encoder(tiny):
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 127.0, 127.0]])
    theirs, dense = tiny.prompt_encoder(points=None, boxes=boxes, masks=None)
    ours, our_dense = embed_prompts(tiny, boxes.view(2, 2, 2), torch.tensor([[2, 3], [2, 3]]))
    torch.testing.assert_close(ours[:, :2], theirs)
    torch.testing.assert_close(our_dense, dense)


def test_prompts_of_several_images_keep_their_order(tiny):
    torch.manual_seed(2)
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    valid = torch.ones(2, 128, 128, dtype=torch.bool)
    points = torch.rand(5, 1, 2) * 127
    labels = torch.ones(5, 1, dtype=torch.long)
    index = torch.tensor([1, 0, 1, 0, 0])
    with torch.no_grad():
        emb = tiny.image_encoder(preprocess(tiny, images, valid))
        logits, _ = decode_masks(tiny, emb, index, points, labels)
        single, _ = decode_masks(tiny, emb[1:2], torch.zeros(1, dtype=torch.long), points[2:3], labels[2:3])
    torch.testing.assert_close(logits[2:3], single)


def test_forward_is_differentiable_end_to_end(tiny):
    model = build_model("vit_tiny", 64)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    emb = model.image_encoder(preprocess(model, images, torch.ones(1, 64, 64, dtype=torch.bool)))
    logits, iou = decode_masks(model, emb, torch.zeros(1, dtype=torch.long), torch.tensor([[[5.0, 6.0]]]),
                               torch.ones(1, 1, dtype=torch.long))
    (logits.mean() + iou.mean()).backward()
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), part


def test_output_candidates_follow_sam():
    labels = torch.tensor([[1, -1], [2, 3], [1, 0], [1, 1], [0, -1]])
    c = output_candidates(labels)
    assert c.tolist() == [[False, True, True, True], [True, False, False, False], [True, False, False, False],
                          [True, False, False, False], [True, False, False, False]]
    assert output_candidates(labels, multimask=False)[:, 0].all()


def test_checkpoint_round_trip_and_samft_checkpoint_format(tmp_path, tiny):
    torch.save(tiny.state_dict(), tmp_path / "raw.pth")
    torch.save({"model": tiny.state_dict(), "step": 3}, tmp_path / "train.pt")
    for name in ("raw.pth", "train.pt"):
        fresh = build_model("vit_tiny", 128)
        load_weights(fresh, tmp_path / name, "vit_tiny")
        for (k, a), b in zip(tiny.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), k


def test_checkpoint_of_another_model_is_explained(tmp_path):
    state = build_model("vit_tiny", 128).state_dict()
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(768, 3, 16, 16)
    torch.save(state, tmp_path / "vit_b_like.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(build_model("vit_tiny", 128), tmp_path / "vit_b_like.pth", "vit_tiny")
    message = str(err.value)
    assert "keys of another shape" in message and "(768, 3, 16, 16)" in message
    assert "set model.name=vit_b" in message


def test_checkpoint_for_another_input_size_is_explained(tmp_path):
    torch.save(build_model("vit_tiny", 256).state_dict(), tmp_path / "big.pth")
    shapes = r"3 keys of another shape.*\(31, 48\) vs model \(15, 48\).*model.image_size"
    with pytest.raises(CheckpointError, match=shapes):
        load_weights(build_model("vit_tiny", 128), tmp_path / "big.pth", "vit_tiny")


def test_unreadable_and_missing_checkpoints_are_explained(tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_weights(build_model("vit_tiny", 64), tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(build_model("vit_tiny", 64), tmp_path / "missing.pth")


def test_freeze_turns_off_gradients_of_chosen_parts():
    model = build_model("vit_tiny", 64)
    freeze(model, image_encoder=True)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert all(p.requires_grad for p in model.mask_decoder.parameters())
    with pytest.raises(UserError, match="nothing of vit_tiny's trainable parameters .* would train"):
        freeze(model, image_encoder=True, prompt_encoder=True, mask_decoder=True)


def test_freezing_what_alone_trains_is_a_user_error():
    model = build_model("hq_vit_tiny", 64)  # HQ-SAM's only trainable parameters are in its decoder
    with pytest.raises(UserError, match="nothing of hq_vit_tiny's trainable parameters"):
        freeze(model, mask_decoder=True)


def test_activation_checkpointing_keeps_gradients():
    from samft.models import checkpoint_activations

    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = build_model("vit_tiny", 64)
        if checkpointed:
            checkpoint_activations(model)
            checkpoint_activations(model)  # idempotent
        calls = []
        for block in model.image_encoder.blocks:
            block.attn.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        images = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
        emb = model.image_encoder(preprocess(model, images, torch.ones(1, 64, 64, dtype=torch.bool)))
        emb.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.image_encoder.named_parameters()})
        # each block runs once, plus once more in backward when its activations were not kept
        assert len(calls) == len(model.image_encoder.blocks) * (2 if checkpointed else 1)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


@pytest.mark.parametrize("case", ["fp32", "bf16_autocast", "hq_sam", "mobile_sam", "sam2", "lora_decoder_dropout",
                                  "cached_embeddings"])
def test_decoder_checkpointing_keeps_loss_and_gradients(case):
    """Two interactive rounds (the second fed the first's mask) give the same loss and gradients with the
    decoder's activations recomputed in backward, and the decoder does run again there; for every family."""
    from samft.models import apply_peft, checkpoint_activations

    if case == "sam2":
        pytest.importorskip("sam2")
    name = {"hq_sam": "hq_vit_tiny", "mobile_sam": "vit_t", "sam2": "sam2_1_hiera_t"}.get(case, "vit_tiny")
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = build_model(name, 64)
        if case == "lora_decoder_dropout":
            apply_peft(model, {"name": "lora", "dropout": 0.2, "targets": ["decoder"]})
            with torch.no_grad():  # LoRA's B starts at zero: give the adapters a gradient path to A
                for n, p in model.named_parameters():
                    if ".lora." in n:
                        p.normal_(0, 0.05)
        if checkpointed:
            checkpoint_activations(model, encoder=False, decoder=True)
        runs = []
        model.mask_decoder.transformer.register_forward_pre_hook(lambda *_, runs=runs: runs.append(1))
        g = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (2, 3, 64, 64), generator=g).to(torch.uint8)
        index, points = torch.tensor([0, 1, 1]), torch.rand(3, 2, 2, generator=g) * 64
        labels = torch.tensor([[1, -1], [2, 3], [1, 0]])
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16_autocast")
        torch.manual_seed(5)  # LoRA's dropout masks: the checkpoint replays them in the recomputation
        with autocast:
            if case == "cached_embeddings":  # the embedding cache: embeddings without gradient
                with torch.no_grad():
                    emb = model.image_encoder(preprocess(model, images, torch.ones(2, 64, 64, dtype=torch.bool)))
            else:
                emb = model.image_encoder(preprocess(model, images, torch.ones(2, 64, 64, dtype=torch.bool)))
            first, iou = decode_masks(model, emb, index, points, labels)
            second, iou2 = decode_masks(model, emb, index, points, labels, first[:, :1].detach())
            loss = (first.float().square().mean() + second.float().sigmoid().mean() + iou.float().sum()
                    + iou2.float().sum())
        loss.backward()
        assert len(runs) == (4 if checkpointed else 2)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert grads and any("mask_decoder." in n for n in grads)  # SAM 2: sam_mask_decoder.
        assert case != "lora_decoder_dropout" or any(".lora." in n for n in grads)
        results.append((loss.detach(), grads))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    assert torch.equal(loss_ckpt, loss)
    assert grads_ckpt.keys() == grads.keys()
    for n in grads:
        assert torch.equal(grads_ckpt[n], grads[n]), n
