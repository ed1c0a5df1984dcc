"""tools/predict.py: prompts decoded in batches give SamPredictor's masks; automatic masks; clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything import SamPredictor

from samft.amg import AutomaticMaskGenerator
from samft.export import load_model
from samft.predict_cli import main as predict_main


@pytest.fixture()
def images(tmp_path, test_image):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(test_image).save(folder / "a.png")
    Image.fromarray(test_image[::-1].copy()).save(folder / "b.png")
    return folder


PROMPTS = [{"points": [[12, 10]], "labels": [1]}, {"box": [30, 25, 62, 46]}, {"points": [[45, 15]], "labels": [1]},
           {"points": [[12, 10], [50, 40]], "labels": [1, 0]},
           {"points": [[20, 20]], "labels": [1], "box": [5, 5, 30, 30]}]


def test_prompts_give_sam_predictors_masks_one_encoding_per_image(trained_run, images, tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"a.png": PROMPTS, "b.png": PROMPTS[:1]}))
    out = tmp_path / "out"
    model = load_model(trained_run)
    assert predict_main([str(trained_run), str(images), "--out", str(out), "--prompts", str(tmp_path / "p.json"),
                         "--overlays", "--batch-size", "2"]) == 0
    record = json.loads((out / "a.json").read_text())
    assert record["image"] == {"file_name": "a.png", "height": 48, "width": 64}
    assert (out / "a.png").is_file() and len(json.loads((out / "b.json").read_text())["annotations"]) == 1

    predictor = SamPredictor(model)
    predictor.set_image(np.asarray(Image.open(images / "a.png").convert("RGB")))
    for prompt, ann in zip(PROMPTS, record["annotations"], strict=True):
        points = np.array(prompt["points"], float) if "points" in prompt else None
        labels = np.array(prompt["labels"]) if "points" in prompt else None
        box = np.array(prompt["box"], float) if "box" in prompt else None
        single_click = points is not None and len(points) == 1 and box is None
        masks, iou, _ = predictor.predict(points, labels, box, multimask_output=single_click)
        best = int(np.argmax(iou))
        assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), masks[best])
        assert ann["predicted_iou"] == pytest.approx(float(iou[best]), abs=1e-6)
        assert ann["area"] == int(masks[best].sum())


def run_with_prompts_for_two_of_three_images(trained_run, images, tmp_path):
    """Prompts for a.png and b.png, and for an image that is not in the folder; c.png has none."""
    Image.open(images / "a.png").save(images / "c.png")
    (tmp_path / "p.json").write_text(json.dumps({"a.png": PROMPTS, "b.png": PROMPTS[:1], "gone.png": PROMPTS}))
    out = tmp_path / "out"
    assert predict_main([str(trained_run), str(images), "--out", str(out), "--prompts", str(tmp_path / "p.json"),
                         "--batch-size", "2"]) == 0
    return out


def test_summary_counts_the_images_processed_and_no_bar_off_a_terminal(trained_run, images, tmp_path, capsys):
    out = run_with_prompts_for_two_of_three_images(trained_run, images, tmp_path)
    captured = capsys.readouterr()  # not a terminal: as in a batch job's log
    assert captured.out == f"Wrote {len(PROMPTS) + 1} masks for 2 images to {out}\n"
    assert "%|" not in captured.err, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json"]


def test_each_image_is_encoded_once_and_its_prompts_decoded_in_batches(trained_run, images, tmp_path, monkeypatch):
    import samft.export

    calls = []  # "encode", or the number of prompts of one mask-decoder call

    def load_and_count(*args, **kwargs):
        model = load_model(*args, **kwargs)
        model.image_encoder.register_forward_hook(lambda *_: calls.append("encode"))
        model.mask_decoder.register_forward_hook(
            lambda _m, _a, kw, _o: calls.append(len(kw["sparse_prompt_embeddings"])), with_kwargs=True)
        return model

    monkeypatch.setattr(samft.export, "load_model", load_and_count)
    run_with_prompts_for_two_of_three_images(trained_run, images, tmp_path)
    # a.png: the 2 single clicks in one batch of --batch-size 2, then the box, the 2-point and the
    # click+box prompt (one of each shape); b.png: its click.
    assert calls == ["encode", 2, 1, 1, 1, "encode", 1]


def test_everything_writes_the_generators_masks(trained_run, images, tmp_path):
    out = tmp_path / "out"
    assert predict_main([str(trained_run), str(images), "--out", str(out), "--everything", "--points-per-side", "4",
                         "--pred-iou-thresh", "0", "--stability-thresh", "0"]) == 0
    expected = AutomaticMaskGenerator(load_model(trained_run), points_per_side=4, pred_iou_thresh=0.0,
                                      stability_score_thresh=0.0).generate(np.asarray(Image.open(images / "b.png")))
    got = json.loads((out / "b.json").read_text())["annotations"]
    assert len(got) == len(expected) > 0
    assert [a["segmentation"] for a in got] == [e["segmentation"] for e in expected]


@pytest.mark.parametrize("prompts, expected", [
    ("not json", "could not be read as JSON"),
    ('{"a.png": [{"points": [[1, 2]], "labels": [3]}]}', "'labels' must give 0 or 1"),
    ('{"a.png": [{"box": [5, 5, 1, 1]}]}', "'box' must be [x0, y0, x1, y1]"),
    ('{"a.png": [{"mask": 1}]}', "needs 'points'"),
    ('{"zzz.png": [{"box": [1, 1, 5, 5]}]}', "names none of the images"),
])
def test_bad_prompts_are_one_clear_error(trained_run, images, tmp_path, capsys, prompts, expected):
    (tmp_path / "p.json").write_text(prompts)
    assert predict_main([str(trained_run), str(images), "--out", str(tmp_path / "o"), "--prompts",
                         str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1


def test_large_images_are_predicted_in_tiles_each_prompt_in_its_tile(trained_run, images, tmp_path):
    """--tile 32 on a 48 x 64 image: tiles at x 0/16/32, y 0/16 (a quarter overlap); each prompt decoded in the
    tile holding most of it, its mask that tile's SamPredictor mask pasted into the whole image."""
    from samft.data.base import assign_to_tiles

    (tmp_path / "p.json").write_text(json.dumps({"a.png": PROMPTS}))
    out = tmp_path / "out"
    assert predict_main([str(trained_run), str(images), "--out", str(out), "--prompts", str(tmp_path / "p.json"),
                         "--tile", "32"]) == 0
    record = json.loads((out / "a.json").read_text())
    windows = [(x, y, 32, 32) for y in (0, 16) for x in (0, 16, 32)]
    image = np.asarray(Image.open(images / "a.png").convert("RGB"))
    predictor = SamPredictor(load_model(trained_run))
    for prompt, ann in zip(PROMPTS, record["annotations"], strict=True):
        pts = np.array(prompt["points"], float) if "points" in prompt else None
        box = np.array(prompt["box"], float) if "box" in prompt else None
        x0, y0, x1, y1 = box if box is not None else (*pts.min(0), *pts.max(0))
        x, y, w, h = windows[int(assign_to_tiles(np.array([[x0, y0, x1 - x0 + 1, y1 - y0 + 1]]), windows)[0])]
        assert ann["tile"] == [x, y, w, h]
        predictor.set_image(np.ascontiguousarray(image[y:y + h, x:x + w]))
        single = pts is not None and len(pts) == 1 and box is None
        masks, iou, _ = predictor.predict(None if pts is None else pts - [x, y], np.array(prompt.get("labels", [])),
                                          None if box is None else box - [x, y, x, y], multimask_output=single)
        want = np.zeros((48, 64), bool)
        want[y:y + h, x:x + w] = masks[int(np.argmax(iou))]
        assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), want)
        assert ann.get("point_coords") == prompt.get("points") and ann.get("box") == prompt.get("box")


def test_automatic_masks_in_tiles_drop_cut_masks_and_duplicates(trained_run, images, tmp_path, looks_fine_tuned):
    from torchvision.ops import box_iou

    from samft.predict import everything_tiled

    model = looks_fine_tuned(load_model(trained_run))
    generator = AutomaticMaskGenerator(model, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    image = np.asarray(Image.open(images / "a.png").convert("RGB"))
    anns = everything_tiled(generator, image, 32, 0.25)
    assert anns, "the perturbed model finds masks"
    for ann in anns:
        x, y, w, h = ann["tile"]
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert mask.shape == (48, 64) and not mask[:, :x].any() and not mask[:y].any()
        bx, by, bw, bh = ann["bbox"]
        assert not (x > 0 and bx <= x + 1) and not (x + w < 64 and bx + bw >= x + w - 1)  # not cut by a tile edge
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns])
    iou = box_iou(boxes, boxes).fill_diagonal_(0)
    assert (iou <= 0.7).all()
