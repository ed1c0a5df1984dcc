"""Every metric declares which way is better where it is defined, and every key samft logs has one."""

import fnmatch

import pytest
import torch

from samft.data import SA1BDataset, collate_masks
from samft.engine.evaluate import evaluate
from samft.engine.runtime import make_runtime
from samft.metrics import VALIDATION_METRICS, direction
from samft.models import build_model
from samft.registry import METRICS, Registry, RegistryError


def test_registered_metrics_declare_a_direction():
    assert {name: METRICS.info(name)["better"] for name in METRICS.names()} == {
        "boundary_iou": "higher", "mask_iou": "higher", "stability_score": "higher"}


def test_registering_a_metric_without_direction_fails():
    registry = Registry("metrics", required=("better",))
    with pytest.raises(RegistryError, match=r"must declare better"):
        registry.register("new_metric")(lambda pred, target: pred)
    registry.register("error_rate", better="lower")(lambda pred, target: pred)
    assert registry.info("error_rate") == {"better": "lower"}


@pytest.mark.parametrize(("key", "better"), [
    ("val/iou_calibration_point", "lower"),  # an error: reported "best (max)" before
    ("val/stable_share_point", "higher"),  # a share of good masks: reported "best (min)" before
    ("val/miou_point", "higher"), ("val/miou_click3", "higher"), ("loss/total", "lower"),
    ("loss/dice", "lower"), ("val/num_masks", None), ("lr/decoder", None), ("unknown_key", None)])
def test_direction_of_logged_keys(key, better):
    assert direction(key) == better


def test_every_validation_key_is_declared(demo_data):
    """A key evaluate() returns without a declaration here would be compared without a direction."""
    model = build_model("vit_tiny", 64)
    dataset = SA1BDataset(demo_data / "val", image_size=64, max_masks=2, prompt="point")
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_masks)
    keys = evaluate(model, loader, make_runtime("cpu"), max_images=2, max_masks=2, clicks=1).metrics
    undeclared = [k for k in keys if not any(fnmatch.fnmatchcase(k, p) for p in VALIDATION_METRICS)]
    assert undeclared == []
