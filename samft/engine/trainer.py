"""The training loop: build everything from the config, then run steps you can read top to bottom."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm

from samft import __version__
from samft.config import to_dict, to_yaml
from samft.data import SA1BDataset, collate_masks
from samft.engine.checkpoint import save_atomic
from samft.engine.evaluate import evaluate
from samft.engine.interactive import Rounds, combine_rounds, run_rounds
from samft.engine.optim import build_lr_scheduler, build_optimizer, param_groups
from samft.engine.runtime import make_runtime, seed_everything
from samft.engine.step import encode_images, loss_targets, to_device
from samft.losses import call_loss
from samft.models import build_model, freeze, load_weights
from samft.registry import LOSSES, SCHEDULES, WEIGHTINGS
from samft.tracking import Tracker

log = logging.getLogger("samft.train")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row); the message says why."""


@dataclass
class FitResult:
    run_dir: Path
    steps: int
    history: list[dict[str, float]]  # one record per logged step
    val_metrics: dict[str, float]
    checkpoint: Path
    run_id: str | None
    ui_hint: str


class Trainer:
    """Fine-tunes SAM on an SA-1B-style dataset as the config says.

    Args:
        cfg: A config from :func:`samft.config.load`.
        project_root: Folder holding the embedded MLflow store and relative output paths.
    """

    def __init__(self, cfg: DictConfig, project_root: Path | None = None) -> None:
        self.cfg = cfg
        self.root = Path(project_root or Path.cwd())
        self.runtime = make_runtime(cfg.train.device, cfg.train.precision)
        seed_everything(cfg.train.seed)
        self.train_set = self._dataset(cfg.data.train, seed=cfg.train.seed)
        self.val_set = self._dataset(cfg.data.val, seed=cfg.eval.seed, prompt="point") if cfg.data.val else None
        self.model = self._model()
        self.loss_fn = LOSSES.build(cfg.loss)
        self.terms = self._probe_terms()
        self.weighting = WEIGHTINGS.build(cfg.weighting, terms=self.terms).to(self.runtime.device)
        self.weighting.bind(self.model)
        groups = param_groups(self.model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                              encoder_lr=cfg.optim.encoder_lr)
        groups += self.weighting.param_groups(cfg.optim.lr)
        self.optimizer = build_optimizer(groups, betas=tuple(cfg.optim.betas))
        self.lr_scheduler = build_lr_scheduler(self.optimizer, SCHEDULES.build(cfg.schedule))
        self.scaler = self.runtime.grad_scaler()
        p = cfg.prompts
        self.rounds = Rounds(p.correction_clicks, p.extra_rounds, p.feed_back_mask)
        self.click_generator = torch.Generator(self.runtime.device).manual_seed(cfg.train.seed)
        self.step = 0
        self.nonfinite_in_row = 0

    # -- building ---------------------------------------------------------------------------
    def _dataset(self, root: str, *, seed: int, prompt: str | None = None) -> SA1BDataset:
        d, p = self.cfg.data, self.cfg.prompts
        return SA1BDataset(
            self.root / root, image_size=self.cfg.model.image_size, max_masks=d.max_masks,
            prompt=prompt or p.mode, box_prob=p.box_prob, transforms=list(d.augment) if prompt is None else None,
            min_area=d.min_area, max_area_frac=d.max_area_frac, min_predicted_iou=d.min_predicted_iou,
            min_stability=d.min_stability, on_error=d.on_error, with_dist_maps=d.with_dist_maps, seed=seed,
        )

    def _model(self) -> torch.nn.Module:
        m = self.cfg.model
        model = build_model(m.name, m.image_size)
        if m.checkpoint:
            load_weights(model, self.root / m.checkpoint, m.name)
        freeze(model, image_encoder=m.freeze_image_encoder, prompt_encoder=m.freeze_prompt_encoder,
               mask_decoder=m.freeze_mask_decoder)
        return model.to(self.runtime.device)

    def _probe_terms(self) -> list[str]:
        """Names of the loss's terms: one call on a tiny synthetic batch (cheap, shape-agnostic)."""
        n, size = 2, 8
        logits = torch.zeros(n, 4, size, size, requires_grad=True)
        target = torch.zeros(n, size, size)
        target[:, 2:6, 2:6] = 1.0
        extras = {"iou_pred": torch.zeros(n, 4, requires_grad=True),
                  "candidates": torch.ones(n, 4, dtype=torch.bool),
                  "valid": torch.ones(n, size, size, dtype=torch.bool), "dist_map": torch.zeros(n, size, size),
                  "num_masks": float(n), "step": 0, "epoch": 0}
        return list(loss_terms(call_loss(self.loss_fn, logits, target, **extras)))

    def _loader(self, dataset: SA1BDataset, *, shuffle: bool) -> DataLoader:
        d = self.cfg.data
        return DataLoader(dataset, batch_size=d.batch_size, shuffle=shuffle, num_workers=d.num_workers,
                          collate_fn=collate_masks, drop_last=shuffle, persistent_workers=d.num_workers > 0,
                          pin_memory=self.runtime.device.type == "cuda")

    def _batches(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        epoch = 0
        while True:
            self.train_set.set_epoch(epoch)
            yielded = False
            for batch in loader:
                if batch["masks"].shape[0] == 0:
                    continue
                yielded = True
                yield batch
            if not yielded:
                raise TrainingError(f"No usable mask in {self.train_set.root}: every image was skipped.")
            epoch += 1

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Forward, loss, weighting, backward and optimiser step on one collated batch."""
        cfg, rt = self.cfg, self.runtime
        batch = to_device(batch, rt.device)
        with rt.autocast():
            embeddings = encode_images(self.model, batch)
            predictions = run_rounds(self.model, embeddings, batch, self.rounds, multimask=cfg.prompts.multimask,
                                     resolution=cfg.train.loss_resolution, generator=self.click_generator)
        targets = loss_targets(batch, predictions[0].logits.shape[-1])
        target = targets.pop("target")
        num_masks = float(max(target.shape[0], 1))
        per_round = []
        for pred in predictions:
            out = call_loss(self.loss_fn, pred.logits.float(), target, iou_pred=pred.iou_pred.float(),
                            candidates=pred.candidates, num_masks=num_masks, step=self.step, **targets)
            per_round.append(loss_terms(out))
        terms = combine_rounds(per_round, cfg.prompts.round_loss)
        total, weights = self.weighting(terms, self.step)
        if not torch.isfinite(total):
            return self._skip_nonfinite(terms)
        self.nonfinite_in_row = 0
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        record = {"loss/total": float(total.detach())}
        record.update({f"loss/{k}": float(v.detach()) for k, v in terms.items()})
        record.update({f"weight/{k}": float(v) for k, v in weights.items()})
        record.update({f"stat/{k}": float(v) for k, v in loss_stats(out).items()})
        for r in sorted({0, len(per_round) - 1}):  # first vs last round: does interaction help?
            record.update({f"loss_round{r}/{k}": float(v.detach()) for k, v in per_round[r].items()})
        record["grad_norm"] = float(grad_norm)
        record["masks"] = num_masks
        record["skipped_files"] = float(batch.get("skipped", 0))
        return record

    def _skip_nonfinite(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_row += 1
        limit = self.cfg.train.max_nonfinite_steps
        bad = {k: float(v) for k, v in terms.items()}
        log.warning("step %d: non-finite loss %s; step skipped (%d in a row)", self.step, bad, self.nonfinite_in_row)
        if self.nonfinite_in_row >= limit:
            raise TrainingError(
                f"{self.nonfinite_in_row} non-finite losses in a row (last terms: {bad}); stopping. Lower "
                "optim.lr, set optim.grad_clip, or use train.precision=bf16/fp32 instead of fp16."
            )
        return {"nonfinite_skipped": 1.0}

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train for ``train.steps`` steps with periodic validation and checkpoints; returns the run."""
        cfg = self.cfg
        run_dir = self._run_dir()
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        tracker = Tracker.start(cfg.tracking, config=to_dict(cfg), project_root=self.root,
                                tags={"samft_version": __version__, "run_dir": str(run_dir)})
        log.info("run folder %s; %s", run_dir, tracker.ui_hint)
        history: list[dict[str, float]] = []
        val_metrics: dict[str, float] = {}
        status = "FAILED"
        try:
            batches = self._batches(self._loader(self.train_set, shuffle=True))
            progress = tqdm(total=cfg.train.steps, disable=not cfg.train.progress, desc="train", unit="step")
            started, images = time.perf_counter(), 0
            while self.step < cfg.train.steps:
                batch = next(batches)
                record = self.train_step(batch)
                self.step += 1
                images += batch["images"].shape[0]
                progress.update(1)
                if self.step % cfg.tracking.log_every == 0 or self.step == cfg.train.steps:
                    record.update(self._lr_record())
                    record["images_per_s"] = images / max(time.perf_counter() - started, 1e-9)
                    started, images = time.perf_counter(), 0
                    tracker.log_metrics(record, step=self.step)
                    history.append({"step": float(self.step), **record})
                    progress.set_postfix(loss=f"{record.get('loss/total', float('nan')):.4f}")
                if self.val_set is not None and (self.step % cfg.train.val_every == 0 or self.step == cfg.train.steps):
                    val_metrics = self.validate(tracker)
                if self.step % cfg.train.checkpoint_every == 0:
                    self.save(run_dir / "checkpoints" / "last.pt")
            progress.close()
            checkpoint = self.save(run_dir / "checkpoints" / "last.pt")
            if cfg.tracking.log_checkpoint:
                tracker.log_artifact(checkpoint, "checkpoints")
            tracker.log_curves()
            status = "FINISHED"
        finally:
            tracker.close(status)
        return FitResult(run_dir, self.step, history, val_metrics, checkpoint, tracker.run_id, tracker.ui_hint)

    def validate(self, tracker: Tracker) -> dict[str, float]:
        e = self.cfg.eval
        loader = self._loader(self.val_set, shuffle=False)
        result = evaluate(self.model, loader, self.runtime, max_images=e.max_images, max_masks=e.max_masks,
                          multimask=self.cfg.prompts.multimask, keep_examples=self.cfg.tracking.overlays)
        metrics = {f"val/{k}": v for k, v in result.metrics.items()}
        tracker.log_metrics(metrics, step=self.step)
        if result.examples:
            stacked = {k: torch.stack([ex[k] for ex in result.examples]) for k in result.examples[0]}
            tracker.log_overlays(stacked["image"], stacked["gt"], stacked["pred"], stacked["points"],
                                 stacked["point_labels"], step=self.step, tag="val")
        log.info("step %d validation: %s", self.step, metrics)
        return metrics

    def save(self, path: Path) -> Path:
        """Write model, optimiser, scaler, schedules, weighting state, RNG and step atomically."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "step": self.step,
            "config": to_yaml(self.cfg),
            "rng": {"torch": torch.get_rng_state()},
        }
        return save_atomic(state, path)

    def _lr_record(self) -> dict[str, float]:
        return {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}

    def _run_dir(self) -> Path:
        name = self.cfg.train.run_name or time.strftime("%Y%m%d-%H%M%S")
        run_dir = self.root / self.cfg.train.output_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir


def loss_terms(out: torch.Tensor | dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weightable terms of a loss result: 0-dim tensors that carry a gradient.

    A loss returning a single tensor has one term, ``loss``. A dict's ``loss`` entry is the loss's own
    weighted sum; the weighting strategy recombines the terms instead, so it is not a term itself.
    """
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    terms = {k: v for k, v in out.items()
             if k != "loss" and isinstance(v, torch.Tensor) and v.ndim == 0 and v.requires_grad}
    return terms or {"loss": out["loss"]}


def loss_stats(out: torch.Tensor | dict[str, Any]) -> dict[str, float]:
    """Scalar statistics a loss reports beside its terms (coverage, current weights, ...)."""
    if isinstance(out, torch.Tensor):
        return {}
    stats = {}
    for k, v in out.items():
        if k == "loss" or (isinstance(v, torch.Tensor) and (v.ndim > 0 or v.requires_grad)):
            continue
        if isinstance(v, (int, float)) or isinstance(v, torch.Tensor):
            stats[k] = float(v)
    return stats
