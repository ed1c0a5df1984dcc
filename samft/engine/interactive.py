"""SAM's interactive training rounds (SAM paper App. A; SAM 2's ``_iter_correct_pt_sampling``).

Round 0 uses the batch's first prompt (a point or a box). Each of the next ``correction_clicks``
rounds adds one click sampled uniformly from the error region of the previous prediction
(a false-negative pixel gives a positive click, a false-positive pixel a negative one), and
``extra_rounds`` more rounds add nothing new. From round 1 on, the previous round's low-res
logits of the output with the highest predicted IoU are fed back as the mask prompt. SAM uses
8 clicks + 2 extra rounds (11 in all), SAM 2 uses 7 clicks.

The image is encoded once; only the light prompt encoder and mask decoder run per round. The
fed-back logits and the clicks are computed without gradient, as in SAM 2, so memory grows with
the number of rounds only by each round's decoder activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam
from torch import nn

from samft.data import Batch
from samft.engine.step import Prediction, encode_images, predict
from samft.models import best_output, upscale
from samft.prompting import append_clicks, sample_correction_clicks

ROUND_LOSSES = ("mean", "sum", "last")


@dataclass(frozen=True)
class Rounds:
    """How many interactive rounds one training step runs."""

    correction_clicks: int = 0
    extra_rounds: int = 0
    feed_back_mask: bool = True

    @property
    def total(self) -> int:
        return 1 + self.correction_clicks + self.extra_rounds


class InteractiveForward(nn.Module):
    """A training step's whole forward (image encoder once, then every round) as one module call,
    so that DistributedDataParallel sees exactly one forward per backward.

    Args:
        sam: The model; its submodules are called directly (``Sam.forward`` is no-grad).
        rounds: Interactive rounds per step.
        multimask: SAM's 3-output min-loss selection for single-click prompts.
        resolution: ``low_res`` or ``input`` (see :func:`samft.engine.step.predict`).
    """

    def __init__(self, sam: Sam, rounds: Rounds, *, multimask: bool, resolution: str) -> None:
        super().__init__()
        self.sam, self.rounds, self.multimask, self.resolution = sam, rounds, multimask, resolution

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> list[Prediction]:
        """Every round's predictions; ``batch.embeddings`` (from the embedding cache) skips the encoder."""
        embeddings = batch.embeddings
        if embeddings is None:
            embeddings = encode_images(self.sam, batch.images, batch.valid)
        return run_rounds(self.sam, embeddings, batch, self.rounds, multimask=self.multimask,
                          resolution=self.resolution, generator=generator)


def run_rounds(model: Sam, embeddings: torch.Tensor, batch: Batch, rounds: Rounds, *,
               multimask: bool, resolution: str, generator: torch.Generator | None = None) -> list[Prediction]:
    """Predictions of every round, in order (``rounds.total`` of them).

    Args:
        embeddings: ``[B, C, h, w]`` image embeddings of the batch.
        batch: Collated batch on the model's device; its prompts are the first round's.
        generator: Random generator for the correction clicks (part of the resumable state).
    """
    points, labels = batch.points, batch.point_labels
    mask_inputs = None
    predictions: list[Prediction] = []
    for r in range(rounds.total):
        if r > 0:
            previous = _fed_back_logits(predictions[-1])
            mask_inputs = previous if rounds.feed_back_mask else None
            if r <= rounds.correction_clicks:
                points, labels = _add_click(batch, previous, points, labels, generator)
        prompted = batch.replace(points=points, point_labels=labels)
        predictions.append(predict(model, embeddings, prompted, multimask=multimask, resolution=resolution,
                                   mask_inputs=mask_inputs))
    return predictions


def combine_rounds(per_round: list[dict[str, torch.Tensor]], how: str) -> dict[str, torch.Tensor]:
    """One value per loss term from the rounds' terms: their ``mean``, ``sum`` or the ``last`` round's."""
    if how not in ROUND_LOSSES:
        raise ValueError(f"prompts.round_loss={how!r}; choose one of {', '.join(ROUND_LOSSES)}.")
    if how == "last":
        return per_round[-1]
    summed = {k: torch.stack([terms[k] for terms in per_round]).sum() for k in per_round[0]}
    if how == "sum":
        return summed
    return {k: v / len(per_round) for k, v in summed.items()}


@torch.no_grad()
def _fed_back_logits(prediction: Prediction) -> torch.Tensor:
    """``[N, 1, h, w]`` low-res logits of the output SAM itself would pick (highest predicted IoU)."""
    chosen = best_output(prediction.iou_pred, prediction.candidates)
    rows = torch.arange(chosen.shape[0], device=chosen.device)
    return prediction.low_res[rows, chosen].unsqueeze(1).detach()


@torch.no_grad()
def _add_click(batch, previous, points, labels, generator):
    size = batch.masks.shape[-1]
    predicted = upscale(previous.float(), size).squeeze(1) > 0
    valid = batch.valid[batch.image_index]
    new_points, new_labels = sample_correction_clicks(predicted, batch.masks.bool(), valid, generator)
    return append_clicks(points, labels, new_points, new_labels)
