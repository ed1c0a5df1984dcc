"""HQ-SAM: the released sam_hq_vit_*.pth key layout, the HQ token and feature fusion as sam-hq computes
them, SAM's forward, and that only HQ-SAM's additions train.

sam-hq's package is not installable here: its additions are pinned by the shapes written from its
``mask_decoder_hq.py`` (below), the HQ mask against sam-hq's formula applied by hand to the decoder's
own parts, and SAM's parts against segment_anything.
"""

import pytest
import torch

from samft.models import build_model, decode_masks, freeze, load_weights, preprocess
from samft.models.checkpoint import guess_arch


def hq_additions(vit_dim, dim=256):
    """sam-hq's MaskDecoderHQ additions: HQ token + MLP, compress_vit_feat, embedding_encoder, embedding_maskfeature."""
    keys = {"hf_token.weight": (1, dim)}
    for i, (n_out, n_in) in enumerate([(dim, dim), (dim, dim), (dim // 8, dim)]):
        keys.update({f"hf_mlp.layers.{i}.weight": (n_out, n_in), f"hf_mlp.layers.{i}.bias": (n_out,)})
    for name, (c0, c1, c2, k) in {"compress_vit_feat": (vit_dim, dim, dim // 8, 2),
                                  "embedding_encoder": (dim, dim // 4, dim // 8, 2)}.items():
        keys.update({f"{name}.0.weight": (c0, c1, k, k), f"{name}.0.bias": (c1,), f"{name}.1.weight": (c1,),
                     f"{name}.1.bias": (c1,), f"{name}.3.weight": (c1, c2, k, k), f"{name}.3.bias": (c2,)})
    keys.update({"embedding_maskfeature.0.weight": (dim // 4, dim // 8, 3, 3),
                 "embedding_maskfeature.0.bias": (dim // 4,),
                 "embedding_maskfeature.1.weight": (dim // 4,), "embedding_maskfeature.1.bias": (dim // 4,),
                 "embedding_maskfeature.3.weight": (dim // 8, dim // 4, 3, 3),
                 "embedding_maskfeature.3.bias": (dim // 8,)})
    return {f"mask_decoder.{k}": v for k, v in keys.items()}


@pytest.mark.parametrize("name, vit_dim", [("vit_b", 768), ("vit_l", 1024), ("vit_h", 1280)])
def test_state_dict_is_sam_hqs_layout(name, vit_dim):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours = build_model(f"hq_{name}")
        sam = {k: tuple(v.shape) for k, v in sam_model_registry[name]().state_dict().items()}
        shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert shapes == {**sam, **hq_additions(vit_dim)}
        assert guess_arch(ours.state_dict()) == f"hq_{name}"
        assert guess_arch(sam_model_registry[name]().state_dict()) == name


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("hq_vit_tiny", 128).eval()
    with torch.no_grad():  # the additions of a trained model are not at their initialisation
        for p in model.mask_decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_encoder_returns_sams_embedding_and_the_feature_after_the_first_global_block(tiny):
    enc = tiny.image_encoder
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = enc(x)
        h = enc.patch_embed(x) + enc.pos_embed
        for block in enc.blocks[:2]:  # vit_tiny: blocks 0 (windowed) and 1 (global)
            h = block(h)
    assert enc.blocks[1].window_size == 0 and enc.blocks[0].window_size > 0
    torch.testing.assert_close(out[:, :64], enc.neck(h.permute(0, 3, 1, 2)))
    torch.testing.assert_close(out[:, 64:], h.permute(0, 3, 1, 2))


def test_hq_mask_follows_sam_hqs_formula(tiny):
    """HQ mask = hf_mlp(HQ token) . (embedding_maskfeature(upscaled) + embedding_encoder(emb)
    + compress_vit_feat(early)), as sam-hq's predict_masks; SAM's masks from the same pass."""
    dec, pe = tiny.mask_decoder, tiny.prompt_encoder
    torch.manual_seed(2)
    features = torch.randn(1, 64 + 96, 8, 8)
    points, labels = torch.rand(3, 1, 2) * 127, torch.ones(3, 1, dtype=torch.long)
    with torch.no_grad():
        sparse, dense = pe(points=(points, labels), boxes=None, masks=None)
        emb, early = features[:, :64], features[:, 64:]
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight, dec.hf_token.weight])
        tokens = torch.cat([tokens.expand(3, -1, -1), sparse], dim=1)
        hs, src = dec.transformer(emb.expand(3, -1, -1, -1) + dense, pe.get_dense_pe().expand(3, -1, -1, -1), tokens)
        up = dec.output_upscaling(src.transpose(1, 2).reshape(3, 64, 8, 8))
        up_hq = dec.embedding_maskfeature(up) + dec.embedding_encoder(emb) + dec.compress_vit_feat(early)
        hq = torch.einsum("nc,nchw->nhw", dec.hf_mlp(hs[:, 5]), up_hq)
        sam = torch.stack([torch.einsum("nc,nchw->nhw", dec.output_hypernetworks_mlps[i](hs[:, 1 + i]), up)
                           for i in range(4)], dim=1)
        iou = dec.iou_prediction_head(hs[:, 0])
        masks, pred = dec.predict_masks(features, pe.get_dense_pe(), sparse, dense)
        torch.testing.assert_close(masks, hq[:, None].expand(-1, 4, -1, -1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pred, iou)
        dec.hq_token_only = False  # HQ-SAM's default at inference: SAM's mask + the HQ mask
        try:
            masks, _ = dec.predict_masks(features, pe.get_dense_pe(), sparse, dense)
        finally:
            dec.hq_token_only = True
        torch.testing.assert_close(masks, sam + hq[:, None], atol=1e-5, rtol=1e-5)


def test_forward_matches_sam_forward(tiny):
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    points, labels = torch.tensor([[[20.0, 30.0]], [[100.0, 50.0]]]), torch.ones(2, 1, dtype=torch.long)
    theirs = tiny([{"image": image.float(), "original_size": (96, 128), "point_coords": points,
                    "point_labels": labels}], multimask_output=False)[0]
    padded = torch.zeros(1, 3, 128, 128, dtype=torch.uint8)
    padded[:, :, :96] = image
    valid = torch.zeros(1, 128, 128, dtype=torch.bool)
    valid[:, :96] = True
    with torch.no_grad():
        emb = tiny.image_encoder(preprocess(tiny, padded, valid))
        logits, iou = decode_masks(tiny, emb, torch.zeros(2, dtype=torch.long), points, labels)
    torch.testing.assert_close(logits[:, :1], theirs["low_res_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou[:, :1], theirs["iou_predictions"], atol=1e-5, rtol=1e-5)


def test_only_the_hq_additions_train():
    model = build_model("hq_vit_tiny", 64)
    freeze(model)  # nothing frozen by the config: HQ-SAM's rule still freezes SAM
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k in hq_additions(96, 64)}


def test_a_sam_checkpoint_starts_hq_sam_and_an_hq_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    sam = build_model("vit_tiny", 64)
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    hq = build_model("hq_vit_tiny", 64)
    init = {k: v.clone() for k, v in hq.state_dict().items()}
    load_weights(hq, tmp_path / "sam.pth", "hq_vit_tiny")  # SAM's weights, additions at their init
    for key, value in hq.state_dict().items():
        assert torch.equal(value, sam.state_dict()[key] if key in sam.state_dict() else init[key]), key
    torch.save(hq.state_dict(), tmp_path / "hq.pth")
    again = build_model("hq_vit_tiny", 64)
    load_weights(again, tmp_path / "hq.pth", "hq_vit_tiny")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in hq.state_dict().items())


def test_export_round_trip_and_onnx(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    from samft.export import load_model
    from samft.export.formats import (
        check_decoder_onnx,
        check_encoder_onnx,
        export_decoder_onnx,
        export_encoder_onnx,
        export_sam,
    )

    files = export_sam(tiny, "hq_vit_tiny", tmp_path / "hq.pth")
    loaded = load_model(files[0])
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in tiny.state_dict().items())
    assert check_encoder_onnx(tiny, export_encoder_onnx(tiny, tmp_path / "encoder.onnx")) < 1e-4
    diffs = check_decoder_onnx(tiny, export_decoder_onnx(tiny, tmp_path / "decoder.onnx"))
    assert max(diffs.values()) < 1e-4, diffs
