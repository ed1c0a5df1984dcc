"""MobileSAM (``vit_t``): the released ``mobile_sam.pt`` key layout, TinyViT's arithmetic, SAM's forward.

MobileSAM's own package is not installable here, so its layout is pinned by an enumeration written
from MobileSAM's public ``tiny_vit_sam.py`` / ``build_sam.py`` module tree (below, independent of
samft's module), its SAM parts against segment_anything, and TinyViT's windowing against a plain
loop over windows.
"""

import itertools

import pytest
import torch

from samft.models import build_model, checkpoint_activations, decode_masks, freeze, load_weights, preprocess

STAGES = [(64, 2, 0, 0), (128, 2, 4, 7), (160, 6, 5, 14), (320, 2, 10, 7)]  # build_sam_vit_t's sizes


def _conv_bn(prefix, cin, cout, k, groups=1):
    keys = {f"{prefix}.c.weight": (cout, cin // groups, k, k)}
    keys.update({f"{prefix}.bn.{n}": (cout,) for n in ("weight", "bias", "running_mean", "running_var")})
    keys[f"{prefix}.bn.num_batches_tracked"] = ()
    return keys


def mobile_sam_encoder_keys():
    """Every key and shape of MobileSAM's ``image_encoder`` (TinyViT with SAM's neck, 1000-class head)."""
    keys = {}
    keys.update(_conv_bn("patch_embed.seq.0", 3, 32, 3))
    keys.update(_conv_bn("patch_embed.seq.2", 32, 64, 3))
    for i, (dim, depth, heads, window) in enumerate(STAGES):
        for b in range(depth):
            p = f"layers.{i}.blocks.{b}"
            if i == 0:  # MBConv, expand ratio 4
                keys.update(_conv_bn(f"{p}.conv1", dim, 4 * dim, 1))
                keys.update(_conv_bn(f"{p}.conv2", 4 * dim, 4 * dim, 3, groups=4 * dim))
                keys.update(_conv_bn(f"{p}.conv3", 4 * dim, dim, 1))
                continue
            keys[f"{p}.attn.attention_biases"] = (heads, window * window)  # one bias per (|dy|, |dx|)
            keys.update({f"{p}.attn.norm.weight": (dim,), f"{p}.attn.norm.bias": (dim,),
                         f"{p}.attn.qkv.weight": (3 * dim, dim), f"{p}.attn.qkv.bias": (3 * dim,),
                         f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
                         f"{p}.mlp.norm.weight": (dim,), f"{p}.mlp.norm.bias": (dim,),
                         f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
                         f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,)})
            keys.update(_conv_bn(f"{p}.local_conv", dim, dim, 3, groups=dim))
        if i < 3:
            out = STAGES[i + 1][0]
            keys.update(_conv_bn(f"layers.{i}.downsample.conv1", dim, out, 1))
            keys.update(_conv_bn(f"layers.{i}.downsample.conv2", out, out, 3, groups=out))
            keys.update(_conv_bn(f"layers.{i}.downsample.conv3", out, out, 1))
    keys.update({"norm_head.weight": (320,), "norm_head.bias": (320,), "head.weight": (1000, 320), "head.bias": (1000,),
                 "neck.0.weight": (256, 320, 1, 1), "neck.1.weight": (256,), "neck.1.bias": (256,),
                 "neck.2.weight": (256, 256, 3, 3), "neck.3.weight": (256,), "neck.3.bias": (256,)})
    return {f"image_encoder.{k}": v for k, v in keys.items()}


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = build_model("vit_t", 256).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and attention biases, as a trained model has
        for name, t in model.state_dict().items():
            if "running_var" in name:
                t.uniform_(0.5, 2.0)
            elif "running_mean" in name or "attention_biases" in name:
                t.normal_(0, 0.2)
    return model


def test_state_dict_is_mobile_sams_layout():
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build_model("vit_t").state_dict().items()}
        sam = {k: tuple(v.shape) for k, v in sam_model_registry["vit_b"]().state_dict().items()
               if not k.startswith("image_encoder.")}
    assert ours == {**mobile_sam_encoder_keys(), **sam}
    assert len(ours) == 439
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model("vit_t").parameters()) == 10_130_092  # MobileSAM's 10.13M


def test_embedding_is_sams_256_x_64_x_64_at_1024():
    model = build_model("vit_t", 1024).eval()
    with torch.no_grad():
        assert model.image_encoder(torch.zeros(1, 3, 1024, 1024)).shape == (1, 256, 64, 64)


def test_attention_bias_index_is_tinyvits_offset_numbering(small):
    """TinyViT numbers offsets (|dy|, |dx|) in the order they first appear over all query/key pairs."""
    for window in (7, 14):
        points = list(itertools.product(range(window), range(window)))
        numbers, idxs = {}, []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                numbers.setdefault(offset, len(numbers))
                idxs.append(numbers[offset])
        block = small.image_encoder.layers[1 if window == 7 else 2].blocks[0]
        assert block.attn.attention_bias_idxs.tolist() == torch.tensor(idxs).view(len(points), -1).tolist()


def test_block_equals_a_loop_over_zero_padded_windows(small):
    """Stage 2 at 256 px: a 16 x 16 grid in 14 x 14 windows, so three of four windows are padded."""
    block = small.image_encoder.layers[2].blocks[0]
    h, w = block.resolution
    ws = block.window
    torch.manual_seed(3)
    x = torch.randn(2, h * w, 160)
    grid = torch.nn.functional.pad(x.view(2, h, w, 160), (0, 0, 0, 2 * ws - w, 0, 2 * ws - h))
    attended = torch.zeros_like(grid)
    for i in range(2):
        for j in range(2):
            win = grid[:, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws].reshape(2, ws * ws, 160)
            attended[:, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws] = block.attn(win).view(2, ws, ws, 160)
    y = x + attended[:, :h, :w].reshape(2, h * w, 160)
    y = block.local_conv(y.transpose(1, 2).reshape(2, 160, h, w)).flatten(2).transpose(1, 2)
    expected = y + block.mlp(y)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected.detach(), atol=1e-5, rtol=1e-5)


def test_attention_is_softmax_of_scaled_dot_products_plus_offset_bias(small):
    attn = small.image_encoder.layers[1].blocks[0].attn
    torch.manual_seed(4)
    x = torch.randn(1, 49, 128)
    qkv = attn.qkv(attn.norm(x)).view(1, 49, 4, 3, 32)  # per head [q, k, v]
    q, k, v = qkv.unbind(3)
    bias = attn.attention_biases[:, attn.attention_bias_idxs]
    weights = torch.softmax(torch.einsum("nhd,mhd->hnm", q[0], k[0]) / 32 ** 0.5 + bias, dim=-1)
    expected = attn.proj(torch.einsum("hnm,mhd->nhd", weights, v[0]).reshape(1, 49, 128))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_forward_matches_sam_forward(small):
    """samft's batched, differentiable path gives exactly segment_anything's Sam.forward on vit_t."""
    torch.manual_seed(1)
    h, w = 192, 256
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    points = torch.tensor([[[40.0, 60.0]], [[200.0, 100.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    theirs = small([{"image": image.float(), "original_size": (h, w), "point_coords": points,
                     "point_labels": labels}], multimask_output=True)[0]
    padded = torch.zeros(1, 3, 256, 256, dtype=torch.uint8)
    padded[:, :, :h, :w] = image
    valid = torch.zeros(1, 256, 256, dtype=torch.bool)
    valid[:, :h, :w] = True
    with torch.no_grad():
        embeddings = small.image_encoder(preprocess(small, padded, valid))
        logits, iou = decode_masks(small, embeddings, torch.zeros(2, dtype=torch.long), points, labels)
    torch.testing.assert_close(logits[:, 1:], theirs["low_res_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou[:, 1:], theirs["iou_predictions"], atol=1e-5, rtol=1e-5)


def test_mobile_sam_pt_round_trip(small, tmp_path):
    """A state dict in mobile_sam.pt's layout loads strictly, by samft and by the export loader."""
    from samft.export import load_model
    from samft.export.formats import export_sam

    path = tmp_path / "mobile_sam.pt"
    torch.save(small.state_dict(), path)
    fresh = build_model("vit_t", 256)
    load_weights(fresh, path, "vit_t")
    for key, value in small.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    loaded = load_model(path)  # a plain state dict: recognised as vit_t at its native 1024 px
    assert loaded.image_encoder.img_size == 1024
    assert set(loaded.state_dict()) == set(mobile_sam_encoder_keys()) | {
        k for k in small.state_dict() if not k.startswith("image_encoder.")}
    written = export_sam(loaded, "vit_t", tmp_path / "export" / "mobile_sam_ft.pt")
    assert written == [tmp_path / "export" / "mobile_sam_ft.pt"]  # MobileSAM's builder fits it: no sidecar
    again = torch.load(written[0], weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in small.state_dict().items())
    files = export_sam(small, "vit_t", tmp_path / "export" / "at256.pt")
    assert len(files) == 2  # another input size: the sidecar says how to build it
    assert load_model(files[0]).image_encoder.img_size == 256


def test_layer_decay_follows_mobile_sams_set_layer_lr_decay(small):
    from samft.models import spec_of

    layer = spec_of(small).decay_layer
    assert layer(small, "patch_embed.seq.0.c.weight") == (1, 12)  # the stem shares block 0's scale
    assert layer(small, "layers.0.blocks.1.conv1.c.weight") == (2, 12)
    assert layer(small, "layers.0.downsample.conv1.c.weight") == (2, 12)  # its stage's last block
    assert layer(small, "layers.2.blocks.0.attn.qkv.weight") == (5, 12)
    assert layer(small, "layers.2.downsample.conv3.bn.weight") == (10, 12)
    assert layer(small, "layers.3.blocks.1.mlp.fc2.weight") == (12, 12)
    assert layer(small, "neck.0.weight") == (13, 12)


def test_frozen_encoder_keeps_its_batchnorm_statistics():
    model = build_model("vit_t", 128)
    freeze(model, image_encoder=True)
    model.train()
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    model.image_encoder(torch.randn(2, 3, 128, 128))
    assert not model.image_encoder.training
    assert all(torch.equal(before[k], v) for k, v in model.image_encoder.state_dict().items())
    freeze(model)  # unfrozen again: train mode follows the model again
    model.train()
    assert model.image_encoder.training


def test_activation_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    plain = build_model("vit_t", 128)
    ckpt = build_model("vit_t", 128)
    ckpt.load_state_dict(plain.state_dict())
    checkpoint_activations(ckpt)
    x = torch.randn(1, 3, 128, 128)
    for model in (plain, ckpt):
        model.image_encoder(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)
    # the recomputation in backward leaves TinyViT's BatchNorm statistics where the forward put them
    buffers = dict(ckpt.image_encoder.named_buffers())
    for name, value in plain.image_encoder.named_buffers():
        torch.testing.assert_close(buffers[name], value, atol=1e-6, rtol=1e-5, msg=name)
    assert all(int(b) == 1 for n, b in buffers.items() if n.endswith("num_batches_tracked"))


def test_onnx_export_of_encoder_and_decoder_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    from samft.export.formats import check_decoder_onnx, check_encoder_onnx, export_decoder_onnx, export_encoder_onnx

    torch.manual_seed(0)
    model = build_model("vit_t", 128).eval()
    assert check_encoder_onnx(model, export_encoder_onnx(model, tmp_path / "encoder.onnx")) < 1e-4
    diffs = check_decoder_onnx(model, export_decoder_onnx(model, tmp_path / "decoder.onnx"))
    assert max(diffs.values()) < 1e-4, diffs


def test_a_copy_of_a_frozen_model_keeps_its_own_eval_mode():
    import copy

    model = build_model("vit_t", 64)
    freeze(model, image_encoder=True)
    twin = copy.deepcopy(model)
    twin.train()
    assert not twin.image_encoder.training and twin.mask_decoder.training
    freeze(twin)  # unfreezing the copy leaves the original frozen
    twin.train()
    model.train()
    assert twin.image_encoder.training and not model.image_encoder.training
