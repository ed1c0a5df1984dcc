"""SAM's objective: values and gradients against a straightforward reference, selection, candidates,
normalisation, ignored pixels, empty targets and the IoU-head loss."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from samft.losses.sam import _MaskStats, iou_prediction, sam, sam_mask
from samft.registry import LOSSES


def reference_sam(logits, target, iou_pred, candidates=None, num_masks=None, empty_target="zero",
                  supervise_all_iou=True, iou_loss="mse"):
    """The SAM 2 formulas written plainly with torch ops (no ignored pixels)."""
    n, m = logits.shape[:2]
    t = target[:, None].expand_as(logits)
    p = torch.sigmoid(logits)
    focal = sigmoid_focal_loss(logits, t, reduction="none").flatten(2).mean(-1)
    dice = 1 - (2 * (p * t).flatten(2).sum(-1) + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    hard, gt = logits > 0, t > 0
    actual = (hard & gt).flatten(2).sum(-1) / (hard | gt).flatten(2).sum(-1).clamp(min=1)
    regress = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}[iou_loss]
    iou = regress(iou_pred, actual.float(), reduction="none")
    cand = torch.ones(n, m, dtype=torch.bool) if candidates is None else candidates
    combo = (20 * focal + dice).detach().masked_fill(~cand, float("inf"))
    sel = combo.argmin(1)
    rows = torch.arange(n)
    iou = (iou * cand).sum(1) / cand.sum(1) if supervise_all_iou else iou[rows, sel]
    keep = target.flatten(1).sum(1) > 0 if empty_target == "zero" else torch.ones(n, dtype=torch.bool)
    norm = n if num_masks is None else num_masks
    f, d, i = ((v * keep).sum() / norm for v in (focal[rows, sel], dice[rows, sel], iou))
    return {"loss": 20 * f + d + i, "focal": f, "dice": d, "iou": i, "selected": sel}


def make_batch(n=6, m=3, size=12, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, m, size, size, generator=gen) * 3).to(dtype).requires_grad_()
    target = (torch.rand(n, size, size, generator=gen) < 0.35).to(dtype)
    iou_pred = torch.rand(n, m, generator=gen).to(dtype).requires_grad_()
    return logits, target, iou_pred


def grads(out, *tensors):
    return torch.autograd.grad(out["loss"], tensors)


def test_registered_names():
    for name in ("sam", "sam_mask", "iou_prediction"):
        assert name in LOSSES.names()


@pytest.mark.parametrize("empty_target", ["zero", "keep"])
@pytest.mark.parametrize("supervise_all_iou", [True, False])
@pytest.mark.parametrize("iou_loss", ["mse", "l1", "smooth_l1"])
def test_sam_matches_reference_values_and_gradients(empty_target, supervise_all_iou, iou_loss):
    logits, target, iou_pred = make_batch()
    target[1] = 0  # an empty target
    kwargs = dict(empty_target=empty_target, supervise_all_iou=supervise_all_iou, iou_loss=iou_loss)
    ours = sam(logits, target, iou_pred=iou_pred, **kwargs)
    ref = reference_sam(logits, target, iou_pred, **kwargs)
    for key in ("loss", "focal", "dice", "iou"):
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-5, atol=1e-7)
        assert ours[key].dtype == torch.float32 and ours[key].dim() == 0
    assert torch.equal(ours["selected"], ref["selected"])
    for a, b in zip(grads(ours, logits, iou_pred), grads(ref, logits, iou_pred)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_sam_loss_is_the_weighted_sum_of_its_components():
    logits, target, iou_pred = make_batch()
    out = sam(logits, target, iou_pred=iou_pred, focal_weight=3.0, dice_weight=0.5, iou_weight=2.0)
    torch.testing.assert_close(out["loss"], 3.0 * out["focal"] + 0.5 * out["dice"] + 2.0 * out["iou"])


def test_only_the_selected_output_receives_mask_gradient():
    logits, target, iou_pred = make_batch(n=5, m=4)
    out = sam(logits, target, iou_pred=iou_pred)
    (grad,) = torch.autograd.grad(out["loss"], logits)
    touched = grad.flatten(2).abs().amax(-1) > 0  # [N, M]
    expected = F.one_hot(out["selected"], 4).bool()
    assert torch.equal(touched, expected)
    assert not out["selected"].requires_grad and out["selected"].dtype == torch.long


def test_selection_picks_the_lowest_weighted_mask_loss():
    target = torch.zeros(2, 8, 8)
    target[:, 2:6, 2:6] = 1
    good = (2 * target - 1) * 5
    logits = torch.stack([torch.zeros(2, 8, 8), good, -good], dim=1)  # output 1 is right
    out = sam(logits, target, iou_pred=torch.zeros(2, 3))
    assert out["selected"].tolist() == [1, 1]


def test_candidates_are_respected():
    target = torch.zeros(3, 8, 8)
    target[:, 2:6, 2:6] = 1
    good = (2 * target - 1) * 5
    logits = torch.stack([good, torch.zeros(3, 8, 8), -good, good * 0.5], dim=1).requires_grad_()
    candidates = torch.tensor([[True, False, False, False], [False, True, True, True], [False, False, True, False]])
    out = sam(logits, target, iou_pred=torch.zeros(3, 4), candidates=candidates)
    assert out["selected"].tolist() == [0, 3, 2]
    (grad,) = torch.autograd.grad(out["loss"], logits)
    touched = grad.flatten(2).abs().amax(-1) > 0
    assert not (touched & ~candidates).any()
    ref = reference_sam(logits, target, torch.zeros(3, 4), candidates=candidates)
    torch.testing.assert_close(out["loss"], ref["loss"])


def test_iou_head_is_supervised_on_candidates_only():
    logits, target, _ = make_batch(n=2, m=4)
    candidates = torch.tensor([[False, True, True, True], [True, False, False, False]])
    iou_pred = torch.rand(2, 4, requires_grad=True)
    out = sam(logits, target, iou_pred=iou_pred, candidates=candidates)
    (grad,) = torch.autograd.grad(out["iou"], iou_pred)
    assert torch.equal(grad != 0, candidates)
    out = sam(logits, target, iou_pred=iou_pred, candidates=candidates, supervise_all_iou=False)
    (grad,) = torch.autograd.grad(out["iou"], iou_pred)
    assert torch.equal(grad != 0, F.one_hot(out["selected"], 4).bool())


def test_num_masks_normalises_every_term():
    logits, target, iou_pred = make_batch(n=4)
    base = sam(logits, target, iou_pred=iou_pred)
    for num_masks in (10.0, torch.tensor(10.0)):
        scaled = sam(logits, target, iou_pred=iou_pred, num_masks=num_masks)
        for key in ("loss", "focal", "dice", "iou"):
            torch.testing.assert_close(scaled[key], base[key] * 4 / 10)
    with pytest.raises(ValueError, match="num_masks"):
        sam(logits, target, iou_pred=iou_pred, num_masks=0)


def test_ignored_and_padding_pixels_have_zero_gradient_and_no_effect():
    logits, target, iou_pred = make_batch(n=3)
    target[:, 0, :] = -1.0  # ignored row
    valid = torch.ones(3, 1, 12, 12, dtype=torch.bool)
    valid[..., -3:] = False  # padded columns
    out = sam(logits, target, iou_pred=iou_pred, valid=valid)
    (grad,) = torch.autograd.grad(out["loss"], logits)
    assert grad[:, :, 0, :].abs().max() == 0 and grad[..., -3:].abs().max() == 0
    # Changing the logits there changes nothing.
    other = logits.detach().clone()
    other[:, :, 0, :] = 50.0
    other[..., -3:] = -50.0
    again = sam(other, target, iou_pred=iou_pred, valid=valid)
    for key in ("loss", "focal", "dice", "iou"):
        torch.testing.assert_close(again[key], out[key])
    # And equals the reference on the cropped, fully valid region.
    crop = (slice(None), slice(None), slice(1, None), slice(None, -3))
    ref = reference_sam(logits[crop], target[crop[:1] + crop[2:]], iou_pred)
    torch.testing.assert_close(out["loss"], ref["loss"])


def test_empty_target_zero_and_keep():
    logits, target, iou_pred = make_batch(n=3)
    target[0] = 0.0
    target[1, :, :] = -1.0  # nothing counted: empty as well
    zero = sam(logits, target, iou_pred=iou_pred, empty_target="zero")
    (grad,) = torch.autograd.grad(zero["loss"], logits)
    assert grad[0].abs().max() == 0 and grad[1].abs().max() == 0 and grad[2].abs().max() > 0
    only_last = sam(logits[2:], target[2:], iou_pred=iou_pred[2:], num_masks=3)
    torch.testing.assert_close(zero["loss"], only_last["loss"])
    keep = sam(logits, target, iou_pred=iou_pred, empty_target="keep")
    (grad,) = torch.autograd.grad(keep["loss"], logits)
    assert grad[0].abs().max() > 0 and grad[1].abs().max() == 0  # no counted pixel: no gradient
    assert keep["loss"] > zero["loss"]
    with pytest.raises(ValueError, match="empty_target"):
        sam(logits, target, iou_pred=iou_pred, empty_target="drop")


def test_single_output_and_one_channel_target():
    logits, target, iou_pred = make_batch(m=1)
    out = sam(logits, target[:, None], iou_pred=iou_pred)
    ref = reference_sam(logits, target, iou_pred)
    torch.testing.assert_close(out["loss"], ref["loss"])
    assert out["selected"].tolist() == [0] * 6


def test_no_masks_gives_a_connected_zero():
    logits = torch.zeros(0, 3, 8, 8, requires_grad=True)
    out = sam(logits, torch.zeros(0, 8, 8), iou_pred=torch.zeros(0, 3), num_masks=1.0)
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and logits.grad.shape == logits.shape


def test_sam_input_errors():
    logits, target, iou_pred = make_batch(n=2)
    with pytest.raises(ValueError, match=r"\[N, M, H, W\]"):
        sam(logits[:, 0], target, iou_pred=iou_pred)
    with pytest.raises(ValueError, match="target must be"):
        sam(logits, target[:, :5], iou_pred=iou_pred)
    with pytest.raises(ValueError, match="0/1"):
        sam(logits, target * 0.5, iou_pred=iou_pred)
    with pytest.raises(ValueError, match="iou_pred"):
        sam(logits, target, iou_pred=iou_pred[:, :2])
    with pytest.raises(ValueError, match="at least one candidate"):
        sam(logits, target, iou_pred=iou_pred, candidates=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="candidates"):
        sam(logits, target, iou_pred=iou_pred, candidates=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="iou_loss"):
        sam(logits, target, iou_pred=iou_pred, iou_loss="huber")


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.4, 1.5), (0.25, 0.0)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_fused_mask_stats_gradcheck_in_double(alpha, gamma, with_weight):
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(3, 2, 15, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    target = (torch.rand(3, 15, generator=gen) > 0.5).double()
    weight = (torch.rand(3, 15, generator=gen) > 0.3).double() if with_weight else None
    if weight is not None:
        target = target * weight
    torch.autograd.gradcheck(lambda x: _MaskStats.apply(x, target, weight, alpha, gamma, 1.0)[:2], (logits,))


def test_sam_objective_gradcheck_in_double():
    logits, target, iou_pred = make_batch(n=3, m=3, size=5, seed=2, dtype=torch.float64)
    target[0, 0] = -1
    candidates = torch.tensor([[False, True, True], [True, False, False], [True, True, True]])

    def loss(x, y):
        return sam(x, target, iou_pred=y, candidates=candidates, num_masks=2.0)["loss"]

    torch.autograd.gradcheck(loss, (logits, iou_pred))


def test_sam_mask_matches_focal_and_dice():
    logits, target, _ = make_batch(m=1)
    logits, target = logits[:, 0], target
    target[2] = 0
    out = sam_mask(logits, target, empty_target="keep")
    focal = sigmoid_focal_loss(logits, target, reduction="none").flatten(1).mean(1)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    torch.testing.assert_close(out["focal"], focal.mean())
    torch.testing.assert_close(out["dice"], dice.mean())
    torch.testing.assert_close(out["loss"], 20 * focal.mean() + dice.mean())
    zero = sam_mask(logits, target, reduction="none")
    assert zero["focal"][2] == 0 and zero["dice"][2] == 0 and zero["focal"].shape == (6,)
    # sam with one output and an untrained-free IoU term equals sam_mask.
    full = sam(logits[:, None], target, iou_pred=torch.zeros(6, 1), iou_weight=0.0, num_masks=4.0)
    torch.testing.assert_close(full["loss"], sam_mask(logits, target, num_masks=4.0)["loss"])


def test_iou_prediction_hand_computed():
    # Prediction covers 3 pixels, target 2, overlap 1: IoU = 1 / 4.
    logits = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    iou_pred = torch.tensor([0.75], requires_grad=True)
    loss = iou_prediction(logits, target, iou_pred=iou_pred)
    assert loss.item() == pytest.approx(0.25)  # (0.75 - 0.25)^2
    assert iou_prediction(logits, target, iou_pred=iou_pred, iou_loss="l1").item() == pytest.approx(0.5)
    assert iou_prediction(logits, target, iou_pred=iou_pred, iou_loss="smooth_l1").item() == pytest.approx(0.125)
    loss.backward()
    assert iou_pred.grad.item() == pytest.approx(1.0)


def test_iou_prediction_empty_union_multi_output_and_no_logit_gradient():
    logits = torch.full((2, 3, 4, 4), -1.0, requires_grad=True)
    target = torch.zeros(2, 4, 4)
    iou_pred = torch.full((2, 3), 0.5)
    out = iou_prediction(logits, target, iou_pred=iou_pred, reduction="none")
    assert out.shape == (2, 3) and torch.allclose(out, torch.full((2, 3), 0.25))  # target IoU 0
    assert not out.requires_grad
    with pytest.raises(ValueError, match="iou_pred"):
        iou_prediction(logits, target, iou_pred=torch.zeros(2))


@pytest.mark.parametrize("sparse", [True, False], ids=["cpu_backward", "accelerator_backward"])
@pytest.mark.parametrize("chunk", [50, 1000])
def test_chunking_does_not_change_values_or_gradients(monkeypatch, chunk, sparse):
    import samft.losses.sam as sam_module

    logits, target, iou_pred = make_batch(n=5)
    ignored = target.clone()
    ignored[0, :2] = -1.0
    single = sam(logits, ignored, iou_pred=iou_pred)  # one step holds the whole batch
    plan = sam_module.ChunkPlan(chunk, sparse_backward=sparse)
    monkeypatch.setattr(sam_module, "chunk_plan", lambda device: plan)  # 1 or 2 masks per step
    chunked = sam(logits, ignored, iou_pred=iou_pred)
    assert torch.equal(chunked["selected"], single["selected"])
    for key in ("loss", "focal", "dice", "iou"):
        torch.testing.assert_close(chunked[key], single[key], rtol=1e-6, atol=1e-8)
    for a, b in zip(grads(chunked, logits, iou_pred), grads(single, logits, iou_pred)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)
    ref = reference_sam(logits, target, iou_pred)
    out = sam(logits, target, iou_pred=iou_pred)
    torch.testing.assert_close(out["loss"], ref["loss"])
    for a, b in zip(grads(out, logits, iou_pred), grads(ref, logits, iou_pred)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_iou_prediction_excludes_ignored_and_padding_pixels():
    # Output 0 predicts all 4 pixels, 2 are foreground: IoU 1/2, loss (1 - 1/2)^2; output 1 predicts
    # nothing: IoU 0, loss 1. Ignoring (or padding) the background column makes output 0 exact.
    logits = torch.ones(1, 2, 2, 2)
    logits[0, 1] = -1.0  # output 1 predicts nothing -> IoU 0
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    iou_pred = torch.ones(1, 2)
    assert iou_prediction(logits, target, iou_pred=iou_pred, reduction="none").tolist() == [[0.25, 1.0]]
    ignored = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])
    assert iou_prediction(logits, ignored, iou_pred=iou_pred, reduction="none").tolist() == [[0.0, 1.0]]
    valid = torch.tensor([[[True, False], [True, False]]])
    assert iou_prediction(logits, target, iou_pred=iou_pred, valid=valid, reduction="none").tolist() == [[0.0, 1.0]]


def test_extra_terms_score_the_selected_output_like_focal_and_dice():
    """An extra mask loss (here Kervadec's boundary loss) joins SAM's objective on the selected output."""
    from samft.losses.boundary import boundary, signed_distance_maps

    torch.manual_seed(3)
    logits = torch.randn(3, 4, 12, 12, requires_grad=True)
    target = (torch.rand(3, 12, 12) > 0.6).float()
    dist_map = torch.from_numpy(signed_distance_maps(target.numpy()))
    iou_pred = torch.rand(3, 4)
    candidates = torch.tensor([[False, True, True, True], [True, False, False, False], [True] * 4])
    plain = sam(logits, target, iou_pred=iou_pred, candidates=candidates, num_masks=2.0)
    out = sam(logits, target, iou_pred=iou_pred, candidates=candidates, num_masks=2.0,
              extra_terms={"boundary": {"name": "boundary"}}, dist_map=dist_map)
    chosen = logits[torch.arange(3), out["selected"]]
    expected = boundary(chosen, target, dist_map=dist_map, reduction="none").sum() / 2.0  # per mask -> sum / N
    torch.testing.assert_close(out["boundary"], expected)
    torch.testing.assert_close(out["loss"], plain["loss"] + expected)
    assert torch.equal(out["selected"], plain["selected"])  # selection is SAM's focal + dice rule
    out["boundary"].backward()
    unselected = torch.ones(3, 4, dtype=torch.bool)
    unselected[torch.arange(3), out["selected"]] = False
    assert logits.grad[unselected].abs().max() == 0


def test_extra_terms_reject_reserved_names():
    with pytest.raises(ValueError, match="already uses"):
        sam(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4), iou_pred=torch.zeros(1, 1),
            extra_terms={"dice": {"name": "dice"}})


def test_the_chunking_is_chosen_per_device():
    """On a GPU the recipe's 64 x 4 x 256 x 256 logits are one chunk with a dense backward (no
    ``nonzero``, which would wait for the device); on a CPU small chunks and the sparse backward."""
    from samft.losses.sam import ACCELERATOR_PLAN, CPU_PLAN, chunk_plan

    for device in ("cuda", "cuda:1", "mps"):
        plan = chunk_plan(torch.device(device))
        assert plan is ACCELERATOR_PLAN and plan.elements >= 64 * 4 * 256 * 256 and not plan.sparse_backward
    assert chunk_plan(torch.device("cpu")) is CPU_PLAN and CPU_PLAN.sparse_backward


def test_the_loss_asks_for_the_plan_of_its_logits_device(monkeypatch):
    import samft.losses.sam as sam_module

    asked = []
    real = sam_module.chunk_plan
    monkeypatch.setattr(sam_module, "chunk_plan", lambda device: asked.append(device) or real(device))
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = (torch.rand(2, 8, 8) > 0.5).float()
    sam(logits, target, iou_pred=torch.rand(2, 4), candidates=torch.ones(2, 4, dtype=torch.bool))["loss"].backward()
    assert asked and all(d == torch.device("cpu") for d in asked)


def test_the_objective_declares_its_terms_and_builds_extra_terms_once(monkeypatch):
    from samft.losses import declared_terms

    spec = {"name": "sam", "extra_terms": {"bnd": {"name": "dice"}}}
    assert declared_terms(spec) == ["focal", "dice", "iou", "bnd"]
    assert declared_terms("sam") == ["focal", "dice", "iou"] and declared_terms("iou_prediction") == ["loss"]
    import samft.losses.sam as sam_module

    monkeypatch.setattr(sam_module, "_BUILT", {})
    built = []
    real_build = LOSSES.build
    monkeypatch.setattr(LOSSES, "build", lambda s, **k: built.append(dict(s)) or real_build(s, **k))
    loss = real_build(spec)
    logits, target = torch.randn(2, 4, 8, 8), (torch.rand(2, 8, 8) > 0.5).float()
    for _ in range(3):
        out = loss(logits, target, iou_pred=torch.rand(2, 4), candidates=torch.ones(2, 4, dtype=torch.bool))
    assert set(declared_terms(spec)) <= set(out) and built == [{"name": "dice"}]
