"""Export: Meta's layout loaded by SAM's own consumers, ONNX checked with onnxruntime, clear errors."""

import json

import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from samft.export import ExportError, load_model, resolve
from samft.export.cli import export_main
from samft.models import build_model, decode_masks, preprocess


def samft_vs_predictor(samft_model, predictor, image):
    """samft's forward and SamPredictor on the same image and prompts; returns the worst differences."""
    predictor.set_image(image)
    size = samft_model.image_encoder.img_size
    h, w = predictor.input_size
    valid = torch.zeros(1, size, size, dtype=torch.bool)
    valid[:, :h, :w] = True
    padded = torch.zeros(1, 3, size, size)
    padded[:, :, :h, :w] = torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)
    with torch.no_grad():
        embedding = samft_model.image_encoder(preprocess(samft_model, padded, valid))
        points = torch.tensor([[[10.0, 12.0]], [[40.0, 30.0]]])
        ours, our_iou = decode_masks(samft_model, embedding, torch.zeros(2, dtype=torch.long),
                                     predictor.transform.apply_coords_torch(points, image.shape[:2]),
                                     torch.ones(2, 1, dtype=torch.long))
        masks, iou, low_res = predictor.predict_torch(predictor.transform.apply_coords_torch(points, image.shape[:2]),
                                                      torch.ones(2, 1), multimask_output=True)
        ours_up = samft_model.postprocess_masks(ours[:, 1:], predictor.input_size, predictor.original_size) > 0
    return {"features": (embedding - predictor.features).abs().max().item(),
            "low_res": (ours[:, 1:] - low_res).abs().max().item(),
            "iou": (our_iou[:, 1:] - iou).abs().max().item(),
            "mask_pixels_differing": (ours_up != masks).sum().item()}


def test_round_trip_train_export_predictor_on_vit_tiny(trained_run, tmp_path, test_image, capsys):
    out = tmp_path / "tiny.pth"
    assert export_main([str(trained_run), "--format", "sam", "--out", str(out)]) == 0
    assert "samft.export.load_model" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "tiny.pth.samft.json").read_text())
    assert sidecar["name"] == "vit_tiny" and sidecar["image_size"] == 64

    trained = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)["model"]
    exported = torch.load(out, weights_only=True)
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k]) and exported[k].dtype == trained[k].dtype for k in trained)

    # The exported file, built as the sidecar says, through SamPredictor vs samft's forward.
    samft_model = load_model(trained_run)
    diffs = samft_vs_predictor(samft_model, SamPredictor(load_model(out)), test_image)
    assert diffs == {"features": 0.0, "low_res": 0.0, "iou": 0.0, "mask_pixels_differing": 0}, diffs


@pytest.mark.slow  # two ViT-B encoder passes at 1024 px: minutes on 2 shared CPU cores
def test_vit_b_export_loads_strictly_in_sam_model_registry_and_predicts_the_same(tmp_path, test_image,
                                                                               looks_fine_tuned):
    model = looks_fine_tuned(build_model("vit_b", 1024)).eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as a DDP-wrapped save would hold
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": state, "optimizer": {}, "step": 1, "config": "model:\n  name: vit_b\n  image_size: 1024\n"},
               ckpt)
    out = tmp_path / "sam_vit_b_ft.pth"
    assert export_main([str(tmp_path / "run"), "--format", "sam", "--out", str(out)]) == 0
    assert not (tmp_path / "sam_vit_b_ft.pth.samft.json").exists()

    sam = sam_model_registry["vit_b"](checkpoint=str(out))  # strict load_state_dict inside
    assert all(torch.equal(sam.state_dict()[k], v) for k, v in model.state_dict().items())
    diffs = samft_vs_predictor(model, SamPredictor(sam.eval()), test_image)
    assert diffs["features"] == 0.0 and diffs["low_res"] == 0.0 and diffs["iou"] == 0.0, diffs
    assert diffs["mask_pixels_differing"] == 0


def test_onnx_decoder_and_encoder_match_torch_under_onnxruntime(trained_run, tmp_path, capsys):
    out = tmp_path / "decoder.onnx"
    assert export_main([str(trained_run / "checkpoints" / "last.pt"), "--format", "onnx", "--out", str(out),
                        "--encoder"]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and (tmp_path / "decoder.encoder.onnx").is_file()
    print(printed)  # the measured differences, in the test log

    import onnxruntime

    from samft.export import check_decoder_onnx, check_encoder_onnx

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image_embeddings", "point_coords", "point_labels",
                                                      "mask_input", "has_mask_input", "orig_im_size"]
    assert [o.name for o in session.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
    model = load_model(trained_run)
    diffs = check_decoder_onnx(model, out, num_points=(1, 3, 7))
    assert max(diffs.values()) < 1e-4, diffs
    assert check_encoder_onnx(model, tmp_path / "decoder.encoder.onnx") < 1e-4


def test_run_folder_prefers_best_then_last_and_reads_the_run_config(trained_run, tmp_path):
    assert resolve(trained_run).path.name == "best.pt"
    only_last = tmp_path / "run"
    (only_last / "checkpoints").mkdir(parents=True)
    (only_last / "checkpoints" / "last.pt").write_bytes((trained_run / "checkpoints" / "last.pt").read_bytes())
    ckpt = resolve(only_last)
    assert ckpt.path.name == "last.pt" and (ckpt.name, ckpt.image_size) == ("vit_tiny", 64)


def _write(path, text=None, obj=None):
    if obj is not None:
        torch.save(obj, path)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda p: p, "has no checkpoints/best.pt or checkpoints/last.pt"),
    (lambda p: _write(p / "notes.txt", text="hi"), "could not be read as PyTorch weights"),
    (lambda p: _write(p / "x.pt", obj={"step": 3}), "not a samft checkpoint"),
    (lambda p: _write(p / "y.pt", obj={"w": torch.zeros(2)}), "no known SAM size"),
    (lambda p: p / "missing.pt", "does not exist"),
])
def test_anything_else_is_one_clear_error(tmp_path, capsys, make, expected):
    target = make(tmp_path)
    with pytest.raises(ExportError, match=expected):
        resolve(target)
    assert export_main([str(target), "--format", "sam", "--out", str(tmp_path / "o.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(target) in err and len(err.strip().splitlines()) == 1
