"""tools/predict.py: prompts decoded in batches give SamPredictor's masks; automatic masks; clear errors."""

import json

import numpy as np
import pytest
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
