"""SAM 2's object-score loss and its ``sam2`` objective, against hand-computed values."""

import math

import pytest
import torch

from samft.losses import call_loss
from samft.losses.object_score import object_score_loss, sam2
from samft.losses.sam import sam
from samft.registry import LOSSES


def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, generator=g)
    target = (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    target[2] = 0  # no object
    iou_pred = torch.rand(3, 4, generator=g)
    return logits, target, iou_pred


def test_object_score_is_bce_against_object_present_summed_over_num_masks():
    _, target, _ = batch()
    scores = torch.tensor([2.0, -1.0, 0.5], requires_grad=True)
    loss = object_score_loss(torch.zeros(3, 4, 8, 8), target, object_score=scores, num_masks=2.0)
    # present, present, absent: -log s(2) - log s(-1) - log(1 - s(0.5)), over num_masks = 2
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(math.log(sig(2.0)) + math.log(sig(-1.0)) + math.log(1 - sig(0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, scores)
    torch.testing.assert_close(grad, torch.tensor([sig(2.0) - 1, sig(-1.0) - 1, sig(0.5)]) / 2)
    valid = torch.zeros(3, 8, 8, dtype=torch.bool)  # every pixel ignored: no object anywhere
    assert object_score_loss(torch.zeros(3, 1, 8, 8), target, object_score=scores, valid=valid,
                             reduction="none").tolist() == pytest.approx([math.log(1 + math.exp(s)) for s in
                                                                          (2.0, -1.0, 0.5)], rel=1e-6)


def test_sam2_is_sam_plus_the_weighted_object_score_term():
    logits, target, iou_pred = batch()
    scores = torch.tensor([1.0, 0.0, -2.0])
    ours = sam2(logits, target, iou_pred=iou_pred, object_score=scores, num_masks=3.0, object_score_weight=0.5)
    base = sam(logits, target, iou_pred=iou_pred, num_masks=3.0, iou_loss="l1")
    for key in ("focal", "dice", "iou"):
        torch.testing.assert_close(ours[key], base[key])
    torch.testing.assert_close(ours["object_score"], object_score_loss(logits, target, object_score=scores,
                                                                       num_masks=3.0))
    torch.testing.assert_close(ours["loss"], base["loss"] + 0.5 * ours["object_score"])


def test_registered_and_called_by_the_engine_convention():
    assert {"sam2", "object_score"} <= set(LOSSES.names())
    logits, target, iou_pred = batch()
    fn = LOSSES.build({"name": "sam2"})
    out = call_loss(fn, logits, target, iou_pred=iou_pred, object_score=torch.zeros(3), candidates=None,
                    num_masks=3.0, step=0, epoch=0)
    assert {"focal", "dice", "iou", "object_score"} <= set(out)
    with pytest.raises(ValueError, match="requires object_score"):  # a model without an object-score head
        call_loss(fn, logits, target, iou_pred=iou_pred)
