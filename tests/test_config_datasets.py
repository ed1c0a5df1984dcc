"""data.train / data.val as reader specs and weighted lists: accepted forms, and one-line errors at load
for an unknown reader, an unknown or missing option, a path that does not exist, a bad weight or label."""

from pathlib import Path

import pytest

from samft.config import ConfigError, load
from samft.data.specs import dataset_specs

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ann.json").write_text("{}")
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    (tmp_path / "shards").mkdir()
    return tmp_path


def test_plain_folder_spec_and_list_are_accepted(files):
    t = files
    cfg = load(DEMO, [f"data.train={t}/img"])
    assert cfg.data.train == f"{t}/img"
    cfg = load(DEMO, [f"data.train={{name: coco, annotations: {t}/ann.json, images: {t}/img, crowd: drop}}"])
    assert dataset_specs(cfg.data.train, "data.train")[0]["options"]["crowd"] == "drop"
    cfg = load(DEMO, [f"data.train=[{{name: sa1b_tar, tars: '{t}/shards/*.tar', weight: 3}}, "
                      f"{{name: label_images, images: {t}/img, labels: {t}/lbl, split_components: true}}]",
                      f"data.val=[{t}/img, {{name: sa1b, root: {t}/img, label: again}}]"])
    train = dataset_specs(cfg.data.train, "data.train")
    assert [(s["name"], s["weight"], s["label"]) for s in train] == [("sa1b_tar", 3, "sa1b_tar"),
                                                                    ("label_images", 1.0, "label_images")]
    assert [s["label"] for s in dataset_specs(cfg.data.val, "data.val")] == ["sa1b", "again"]


def test_a_child_config_replaces_the_parents_folder_with_a_spec(files, tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {DEMO}\ndata:\n  train: {{name: coco, annotations: {files}/ann.json, "
                     f"images: {files}/img}}\n")
    assert load(child).data.train.name == "coco"


BAD = [
    ("data.train={name: cocoo, images: X/img}", "data.train.name=cocoo: Unknown dataset 'cocoo'. Did you mean 'coco'?"),
    ("data.train={name: coco, annotations: X/ann.json, images: X/img, crowds: drop}",
     "data.train.crowds=drop: reader 'coco' has no option 'crowds'. Did you mean 'crowd'?"),
    ("data.train={name: coco, annotations: X/ann.json, images: X/img, crowd: keep}",
     "data.train.crowd=keep: use one of ignore, drop."),
    ("data.train={name: coco, images: X/img}", "data.train: reader 'coco' needs annotations"),
    ("data.train={name: coco, annotations: X/nope.json, images: X/img}",
     "data.train.annotations=X/nope.json: X/nope.json does not exist"),
    ("data.train=[{name: sa1b, root: X/img, weight: 0}]", "data.train[0].weight=0: use a number > 0"),
    ("data.train=[{root: X/img}]", "data.train[0]: add the reader's name"),
    ("data.train=[]", "data.train=[]: list at least one dataset."),
    ("data.val=[{name: sa1b, root: X/img, weight: 2}]", "data.val[0].weight=2: validation scores every dataset"),
    ("data.val=[{name: sa1b, root: X/img, label: a}, {name: sa1b, root: X/img, label: a}]",
     "data.val[1].label=a: the label is used twice"),
    ("data.val=[{name: sa1b, root: X/img, label: a/b}]", "data.val[0].label=a/b: the label is not a plain name"),
    ("data.train={name: label_images, images: X/img}", "data.train: reader 'label_images' needs labels"),
    ("data.crop.multiple=0.5", "data.crop.multiple=0.5: use a number >= 1"),
    ("data.crop.overlap=1", "data.crop.overlap=1.0: use a number in [0, 1)"),
    ("data.crop.mask_prob=2", "data.crop.mask_prob=2.0: use a number in [0, 1]"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_dataset_specs_fail_at_load_with_one_line(files, override, message):
    with pytest.raises(ConfigError) as exc:
        load(DEMO, [override.replace("X", str(files))])
    text = str(exc.value)
    assert text.startswith(message.replace("X", str(files))), text
    assert "\n" not in text


def test_crops_and_the_embedding_cache_exclude_each_other():
    with pytest.raises(ConfigError, match="the cache needs data.crop.enabled=false"):
        load(DEMO, ["model.embedding_cache=cache", "model.freeze_image_encoder=true", "data.crop.enabled=true"])


def test_best_metric_may_name_one_validation_datasets_metric(files):
    val = f"data.val=[{{name: sa1b, root: {files}/img, label: a}}, {{name: sa1b, root: {files}/img, label: b}}]"
    assert load(DEMO, [val, "eval.best_metric=val/b/miou_point"]).eval.best_metric == "val/b/miou_point"
    with pytest.raises(ConfigError, match="eval.best_metric=val/c/miou_point: not a metric validation logs"):
        load(DEMO, [val, "eval.best_metric=val/c/miou_point"])
    with pytest.raises(ConfigError, match="eval.everything.every=5: 'segment everything' validation reads an SA-1B"):
        load(DEMO, [val, "eval.everything.every=5"])
