"""The training loop: build everything from the config, then run steps you can read top to bottom.

Multi-process runs (torchrun) follow two rules. Every decision that changes control flow (skip a
batch, skip a step, stop, end an epoch, keep a best checkpoint, which checkpoint to resume, which run
folder) is taken collectively (:mod:`samft.engine.distributed`), so every rank walks the same path
and reaches the same collectives. Only rank 0 touches files that all ranks need (checkpoints, the run
folder); what it reads, it broadcasts, so nodes need no shared filesystem.

A step reads back from the device once: the go/no-go flag (any rank's loss non-finite, or the
gradients overflowed) that decides whether the optimiser steps and the schedule advances. Logged
values stay on the device and are read at log steps only, reduced over ranks, in one transfer.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, read_write
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from samft.archs import input_frame
from samft.config import ConfigError, to_dict, to_yaml
from samft.data import Batch, MaskDataset, MixedDataset, collate_masks
from samft.engine import console
from samft.engine import distributed as dist
from samft.engine.build import (
    dataset_fingerprint,
    dataset_from_config,
    datasets_from_config,
    model_from_config,
    peft_checkpoint_fields,
)
from samft.engine.checkpoint import find_resume_checkpoint, load_checkpoint, remove_partial_writes, save_atomic
from samft.engine.embedding_cache import EmbeddingCache, with_cached_embeddings
from samft.engine.evaluate import evaluate, mean_metrics
from samft.engine.interactive import InteractiveForward, Rounds, combine_rounds
from samft.engine.optim import build_lr_scheduler, build_optimizer, param_groups
from samft.engine.rng import get_rng_state, set_rng_state
from samft.engine.runtime import make_runtime, seed_everything
from samft.engine.sampler import ResumableSampler, ShardSampler
from samft.engine.signals import StopSignals
from samft.engine.step import encode_images, loss_targets, to_device
from samft.errors import UserError
from samft.losses import call_loss, declared_terms, loss_stats
from samft.models import CheckpointError, checkpoint_activations, parameter_counts
from samft.models.peft import check_base, load_trainable
from samft.registry import LOSSES, SCHEDULES, WEIGHTINGS
from samft.tracking import Tracker
from samft.weighting.analysis import resolve_params, term_grad_norms

log = logging.getLogger("samft.train")


class TrainingError(UserError, RuntimeError):
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
    stopped_by: str | None = None  # signal name when preempted, else None


@dataclass
class StepResult:
    """What one :meth:`Trainer.train_step` did. Values stay on the device until :meth:`Trainer.record`.

    Attributes:
        stepped: The optimiser stepped (False: a rank's loss was non-finite or the gradients
            overflowed; the same on every rank).
        values: Logged values as 0-dim tensors (``loss/<term>``, ``weight/<term>``, ``grad_norm``,
            ``loss_round<r>/<term>``) or numbers.
        masks: Masks trained on this rank.
        skipped_files: Unreadable files the data pipeline skipped in these batches.
        loss_output: The last micro-batch's loss output (its extra statistics are logged).
    """

    stepped: bool
    values: dict[str, Any] = field(default_factory=dict)
    masks: int = 0
    skipped_files: int = 0
    loss_output: Any = None


class MicroStep(NamedTuple):
    """Forward and weighted loss of one micro-batch, before its backward."""

    total: torch.Tensor  # the weighted loss to back-propagate
    terms: dict[str, torch.Tensor]  # unweighted terms, combined over the interactive rounds
    weights: dict[str, Any]  # the weighting's weight of each term in this total
    loss_output: Any  # the last round's loss output (its extra statistics are logged)
    per_round: list[dict[str, torch.Tensor]]  # each round's terms
    term_grad_norms: dict[str, float]  # per-term gradient norms (train.grad_analysis_every steps)


class Trainer:
    """Fine-tunes SAM on an SA-1B-style dataset as the config says.

    Args:
        cfg: A config from :func:`samft.config.load`.
        project_root: Folder holding the embedded MLflow store and relative paths.
        run_prefix: Without ``train.run_name``, the run is named ``<run_prefix>-<time>`` (the time alone
            without a prefix); ``train.resume=auto`` without a name continues the newest run instead.
    """

    def __init__(self, cfg: DictConfig, project_root: Path | str | None = None,
                 run_prefix: str | None = None) -> None:
        self.cfg = cfg
        self.run_prefix = run_prefix
        self.root = Path(project_root or Path.cwd())
        self.dist = dist.from_env()
        self.runtime = make_runtime(cfg.train.device, cfg.train.precision,
                                    dist_init=lambda device: dist.init(device, self.dist))
        seed_everything(cfg.train.seed)
        self.train_set = dataset_from_config(cfg, self.root, cfg.data.train, seed=cfg.train.seed)
        # validation: (label, dataset) each; several are logged as val/<label>/<metric> and their mean
        self.val_sets = [(label, ds) for label, _, ds in datasets_from_config(
            cfg, self.root, cfg.data.val, seed=cfg.eval.seed, train=False)] if cfg.data.val else []
        self.val_set = self.val_sets[0][1] if self.val_sets else None
        mixture = (self.train_set.sizes, self.train_set.weights) if isinstance(self.train_set, MixedDataset) else None
        self.sampler = ResumableSampler(len(self.train_set), seed=cfg.train.seed, rank=self.dist.rank,
                                        world_size=self.dist.world_size, mixture=mixture)
        self.model = self._model()
        self.loss_fn = LOSSES.build(cfg.loss)
        self.terms = declared_terms(cfg.loss)
        self.weighting = WEIGHTINGS.build(cfg.weighting, terms=self.terms).to(self.runtime.device)
        self.weighting.bind(self.model)
        groups = param_groups(self.model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                              encoder_lr=cfg.optim.encoder_lr, layer_decay=cfg.optim.layer_decay)
        groups += self.weighting.param_groups(cfg.optim.lr)
        self.optimizer = build_optimizer(groups, betas=tuple(cfg.optim.betas))
        self.lr_scheduler = build_lr_scheduler(self.optimizer, SCHEDULES.build(cfg.schedule))
        self.scaler = self.runtime.grad_scaler()
        p = cfg.prompts
        rounds = Rounds(p.correction_clicks, p.extra_rounds, p.feed_back_mask)
        self.forward = self._wrap(InteractiveForward(self.model, rounds, multimask=p.multimask,
                                                     resolution=cfg.train.loss_resolution))
        self.embedding_cache = self._embedding_cache()
        self.click_generator = torch.Generator(self.runtime.device).manual_seed(cfg.train.seed + self.dist.rank)
        self.step = self.epoch = self.position = 0  # position: batches drawn in the current epoch
        self.epoch_sums: dict[str, torch.Tensor] = {}  # this rank's per-term loss sums of the epoch
        self.epoch_steps = 0
        self.nonfinite_in_row = 0
        self.run_id: str | None = None
        self.best: float | None = None
        self.val_loaders: list[tuple[str, DataLoader]] = []
        # Last: a run folder appears only once everything above (data, model, plugins) was accepted.
        self.run_dir = self._run_dir()

    # -- building ---------------------------------------------------------------------------
    def _model(self) -> torch.nn.Module:
        model = model_from_config(self.cfg, self.root)  # frozen parts and PEFT applied there
        m = self.cfg.model
        checkpoint_activations(model, encoder=m.activation_checkpointing, decoder=m.decoder_checkpointing)
        trainable, total = parameter_counts(model)
        self.param_counts = {"trainable_params": trainable, "total_params": total}
        if self.dist.is_main:
            peft = self.cfg.model.peft
            log.info("parameters: %s trainable of %s (%.2f%%)%s", f"{trainable:,}", f"{total:,}",
                     100.0 * trainable / max(total, 1), f", model.peft={to_dict(self.cfg)['model']['peft']}" if peft
                     else "")
        return model.to(self.runtime.device)

    def _embedding_cache(self) -> EmbeddingCache | None:
        m = self.cfg.model
        if not m.embedding_cache:
            return None
        return EmbeddingCache(self.root / m.embedding_cache, self.model.image_encoder, m.image_size,
                              input_frame(m.name))

    def _cached_embeddings(self, batch: Batch) -> Batch:
        """The batch with ``embeddings`` from the cache (read ahead by the data loader; the misses
        encoded here once and stored)."""
        if self.embedding_cache is None:
            return batch

        def encode(rows: list[int]) -> torch.Tensor:
            with self.runtime.autocast():
                return encode_images(self.model, batch.images[rows], batch.valid[rows]).float()

        files = [meta["file"] for meta in batch.meta]
        embeddings = self.embedding_cache.embeddings(files, encode, found=batch.cached_embeddings)
        return batch.replace(cached_embeddings=None,
                             embeddings=embeddings.to(self.runtime.device, torch.float32, non_blocking=True))

    def _wrap(self, module: InteractiveForward) -> torch.nn.Module:
        if not self.dist.enabled:
            return module
        # Which parameters receive gradient changes from step to step: the mask-prompt encoder has
        # none in round 0 (or without feedback), no_mask_embed none when only fed-back rounds are
        # trained (round_loss=last), and min-loss output selection leaves the multimask tokens without
        # mask gradient in a batch of boxes. DDP must therefore look for unused parameters every step.
        device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    def _terms(self, out: torch.Tensor | dict[str, Any]) -> dict[str, torch.Tensor]:
        """This step's value of every term the loss declares (a term may lack a gradient in a
        step, e.g. the IoU term of a batch of empty targets; it is then a constant, not missing)."""
        out = {"loss": out} if isinstance(out, torch.Tensor) else out
        missing = [k for k in self.terms if k not in out]
        if missing:
            raise TrainingError(
                f"loss {self.cfg.loss.name!r} declares the terms {self.terms} but returned no {missing} (it returned "
                f"{sorted(out)}): declare what it returns with LOSSES.register(..., terms=...) or a 'terms' "
                "attribute on the loss.")
        return {k: out[k] for k in self.terms}

    def _loader(self, dataset: MaskDataset | MixedDataset,
                sampler: torch.utils.data.Sampler | None = None) -> DataLoader:
        d = self.cfg.data
        collate = collate_masks
        if self.embedding_cache is not None and dataset is self.train_set:
            dataset, collate = with_cached_embeddings(dataset, self.embedding_cache)
        return DataLoader(dataset, batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers,
                          collate_fn=collate, drop_last=isinstance(sampler, ResumableSampler),
                          persistent_workers=d.num_workers > 0, pin_memory=self.runtime.device.type == "cuda")

    def _batches(self, loader: DataLoader) -> Iterator[Batch]:
        """Batches forever, epoch after epoch, starting at the (possibly restored) epoch and position.

        A batch is skipped when any rank's batch has no mask (every rank skips it, so all ranks keep
        taking the same steps). An epoch whose batches were all drawn already (a checkpoint taken at
        its last step) ends at once.
        """
        batch_size = self.cfg.data.batch_size
        if self.sampler.per_rank < batch_size:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the {self.sampler.per_rank} images each "
                              f"rank gets from {self.train_set.description}: lower data.batch_size.")
        while True:
            start = self.position
            if self.sampler.per_rank - start * batch_size >= batch_size:  # else the epoch's batches are all drawn
                self.train_set.set_epoch(self.epoch)
                self.sampler.set_epoch(self.epoch, start=start * batch_size)
                usable = False
                for batch in loader:
                    self.position += 1
                    if dist.host_any(batch.num_masks == 0)[0]:
                        continue
                    usable = True
                    yield batch
                if not usable and start == 0:
                    raise TrainingError(f"No usable mask in {self.train_set.description}: every image was skipped.")
            self._end_epoch()

    def _end_epoch(self) -> None:
        """Tell the weighting the epoch's mean loss per term over all ranks (DWA adapts from these)."""
        if self.epoch_steps:
            names = list(self.epoch_sums)
            sums = dist.device_sum_(torch.stack([self.epoch_sums[k].float() for k in names]))
            means = (sums / (self.epoch_steps * self.dist.world_size)).tolist()
            self.weighting.epoch_end(dict(zip(names, means)))
        self.epoch, self.position, self.epoch_sums, self.epoch_steps = self.epoch + 1, 0, {}, 0

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, batch: Batch | list[Batch]) -> StepResult:
        """Forward (all interactive rounds), loss, weighting, backward and one optimiser step.

        Args:
            batch: One collated batch, or ``train.grad_accum`` of them whose gradients accumulate.
                Every micro-batch's loss is normalised by the masks of all of them (summed over ranks),
                so accumulating k batches of B images gives the gradient of one batch of k x B.

        Returns:
            What the step did; its values are still on the device (see :meth:`record`).
        """
        micro = batch if isinstance(batch, list) else [batch]
        masks = sum(b.num_masks for b in micro)
        num_masks = dist.num_masks_across_ranks(masks)
        finite = torch.ones((), dtype=torch.bool, device=self.runtime.device)
        sums: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(micro):
            mb = to_device(mb, self.runtime.device)  # one at a time: only one micro-batch on the device
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.forward.no_sync()
            with sync:
                step = self._micro_step(mb, num_masks)
                finite &= torch.isfinite(step.total)
                # Every rank runs backward, finite or not: DDP's gradient all-reduce needs all of them.
                self.scaler.scale(step.total).backward()
            for k, v in {"total": step.total, **step.terms}.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach()
        grad_norm = self._gradient_norm()
        stepped = self._step_decision(finite, grad_norm)
        self.weighting.step_end(stepped)
        if not stepped:
            return self._skip_nonfinite(sums)
        result = StepResult(True, masks=masks, skipped_files=sum(b.skipped for b in micro),
                            loss_output=step.loss_output)
        self.nonfinite_in_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        for k in step.terms:
            self.epoch_sums[k] = self.epoch_sums[k] + sums[k] if k in self.epoch_sums else sums[k]
        self.epoch_steps += 1
        result.values = {"loss/total": sums.pop("total"), "grad_norm": grad_norm,
                         **{f"loss/{k}": v for k, v in sums.items()},
                         **{f"weight/{k}": v for k, v in step.weights.items()},
                         **{f"grad_norm/{k}": v for k, v in step.term_grad_norms.items()}}
        rounds = step.per_round  # of the last micro-batch: first vs last round
        for r in sorted({0, len(rounds) - 1}):
            result.values.update({f"loss_round{r}/{k}": v.detach() for k, v in rounds[r].items()})
        return result

    def _micro_step(self, batch: Batch, num_masks: float) -> MicroStep:
        """Forward and weighted loss of one micro-batch (no backward)."""
        batch = self._cached_embeddings(batch)
        with self.runtime.autocast():
            predictions = self.forward(batch, self.click_generator)
        targets = loss_targets(batch, predictions[0].logits.shape[-1])
        target = targets.pop("target")
        per_round = []
        for pred in predictions:
            # SAM 2's object-score logits reach the losses that declare them, the way the IoU predictions do.
            scores = {} if pred.object_score is None else {"object_score": pred.object_score}
            out = call_loss(self.loss_fn, pred.logits, target, iou_pred=pred.iou_pred, candidates=pred.candidates,
                            num_masks=num_masks, step=self.step, epoch=self.epoch, **scores, **targets)
            per_round.append(self._terms(out))
        terms = combine_rounds(per_round, self.cfg.prompts.round_loss)
        analysis = self._term_grad_norms(terms, weights_of(self.weighting, self.step))
        total, weights = self.weighting(terms, self.step)
        return MicroStep(total, terms, weights, out, per_round, analysis)

    def _term_grad_norms(self, terms: dict[str, torch.Tensor], weights: dict[str, float] | None) -> dict[str, float]:
        """Per-term gradient norms at the analysis layer every ``train.grad_analysis_every`` steps: they show
        which term dominates the shared layer's update. Computed with autograd.grad, so the step's own
        backward (and its gradients) is untouched."""
        every = self.cfg.train.grad_analysis_every
        if not every or self.step % every:
            return {}
        params = [p for p in resolve_params(self.model, self.cfg.train.grad_analysis_layer) if p.requires_grad]
        if not params:
            return {}
        return term_grad_norms(terms, params, weights)

    def _gradient_norm(self) -> torch.Tensor:
        """Unscaled gradient norm after clipping's measurement (a device tensor; inf/NaN on overflow).

        The weighting's learnable parameters are outside DDP: their gradients are averaged over ranks
        here, *before* the GradScaler unscales and checks for overflow, so that check sees the
        gradients that will be applied.
        """
        if self.dist.enabled:
            for p in self.weighting.parameters():
                if p.grad is not None:
                    dist.device_sum_(p.grad).div_(self.dist.world_size)
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.runtime.device)
        if self.cfg.optim.grad_clip:
            return torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def _step_decision(self, finite: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether every rank's loss and the (all-reduced) gradients are finite: the step's one read
        from the device, the same answer on every rank."""
        bad = (~finite | ~torch.isfinite(grad_norm)).to(torch.int32)
        return not bool(dist.device_max_(bad).item())

    def _skip_nonfinite(self, sums: dict[str, torch.Tensor]) -> StepResult:
        """A skipped step: no optimiser step, no schedule step; the scaler lowers its scale on overflow."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        self.nonfinite_in_row += 1
        limit = self.cfg.train.max_nonfinite_steps
        bad = {k: round(v, 6) for k, v in zip(sums, torch.stack(list(sums.values())).float().tolist())}
        log.warning("step %d: non-finite loss or gradient (terms on this rank: %s); step skipped on every rank "
                    "(%d in a row)", self.step, bad, self.nonfinite_in_row)
        if self.nonfinite_in_row >= limit:
            raise TrainingError(
                f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step} (last terms on rank "
                f"{self.dist.rank}: {bad}); stopping. Lower optim.lr, set optim.grad_clip, or use "
                "train.precision=bf16/fp32 instead of fp16."
            )
        return StepResult(False)

    def record(self, result: StepResult, images_per_s: float | None = None) -> dict[str, float]:
        """The step's logged values as numbers, averaged over ranks, read from the device in one transfer.

        Every rank must call it at the same steps (it all-reduces)."""
        tensors = {k: v for k, v in result.values.items() if torch.is_tensor(v)}
        numbers = {k: float(v) for k, v in result.values.items() if not torch.is_tensor(v)}
        counts = dist.host_sum([result.masks, result.skipped_files])
        record = {"masks": counts[0], "skipped_files": counts[1], **numbers}
        if tensors:
            stacked = torch.stack([v.detach().float().reshape(()) for v in tensors.values()])
            stacked = dist.device_sum_(stacked) / self.dist.world_size
            record.update(zip(tensors, stacked.tolist()))
        record.update({f"stat/{k}": v for k, v in loss_stats(result.loss_output).items()})
        if images_per_s is not None:
            record["images_per_s"] = images_per_s
        return record

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train for ``train.steps`` steps with periodic validation and checkpoints; returns the run.

        SIGTERM/SIGINT (on any rank) stop the loop after the current step on every rank, and a
        checkpoint is written first.
        """
        state = dist.on_main(self._read_resume_state)
        if state is not None:
            self.load_state_dict(state, f"Checkpoint train.resume={self.cfg.train.resume}")
            log.info("resumed at step %d", self.step)
        tracker = self._tracker()
        self.run_id = tracker.run_id
        history: list[dict[str, float]] = []
        val_metrics: dict[str, float] = {}
        last = self.run_dir / "checkpoints" / "last.pt"
        status, stopped_by = "FAILED", None
        try:
            with StopSignals() as stop:
                stopped_by = self._loop(tracker, history, val_metrics, last, stop)
            status = "KILLED" if stopped_by else "FINISHED"
            best = self.run_dir / "checkpoints" / "best.pt"
            if stopped_by is None and self.cfg.tracking.log_checkpoint and self.dist.is_main:
                tracker.log_artifact(best if best.is_file() else last, "checkpoints")
            tracker.log_curves()
        finally:
            tracker.close(status)
            dist.shutdown()  # the process group init() joined in __init__
        return FitResult(self.run_dir, self.step, history, val_metrics, last, tracker.run_id, tracker.ui_hint,
                         stopped_by)

    def _read_resume_state(self) -> dict[str, Any] | None:
        """The checkpoint ``train.resume`` names, read by rank 0 (the caller broadcasts it)."""
        checkpoints = self.run_dir / "checkpoints"
        remove_partial_writes(checkpoints)  # temp files of a write a SIGKILL interrupted
        path = find_resume_checkpoint(self.cfg.train.resume, checkpoints)
        if path is None:
            return None
        log.info("resuming from %s", path)
        return load_checkpoint(path)

    def _loop(self, tracker, history, val_metrics, last, stop) -> str | None:
        cfg = self.cfg
        batches = self._batches(self._loader(self.train_set, self.sampler))
        progress = tqdm(total=cfg.train.steps, initial=self.step, desc="train", unit="step",
                        # None: tqdm shows the bar on a terminal only, not in batch-job logs
                        disable=None if cfg.train.progress and self.dist.is_main else True)
        started, images = time.perf_counter(), 0
        stopped = None
        while self.step < cfg.train.steps:
            stopped = self._stop_requested(stop)
            if stopped:
                break
            micro = [next(batches) for _ in range(cfg.train.grad_accum)]
            result = self.train_step(micro)
            if not result.stepped:  # no optimiser step was taken: the step count stays
                continue
            self.step += 1
            images += sum(b.num_images for b in micro)
            progress.update(1)
            if self.step % cfg.tracking.log_every == 0 or self.step == cfg.train.steps:
                speed = images * self.dist.world_size / max(time.perf_counter() - started, 1e-9)
                record = {**self.record(result, speed), **self._lr_record()}
                started, images = time.perf_counter(), 0
                tracker.log_metrics(record, step=self.step)
                history.append({"step": float(self.step), **record})
                progress.set_postfix(loss=f"{record.get('loss/total', float('nan')):.4f}")
                if progress.disable and self.dist.is_main:  # no bar (batch job, no terminal): a log line
                    log.info("%s", console.format_step(self.step, cfg.train.steps, record))
            if self.val_set is not None and (self.step % cfg.train.val_every == 0 or self.step == cfg.train.steps):
                val_metrics.update(self.validate(tracker))
            every = cfg.eval.everything.every
            if self.val_set is not None and every and (self.step % every == 0 or self.step == cfg.train.steps):
                val_metrics.update(self.validate_everything(tracker))
            if self.step % cfg.train.checkpoint_every == 0 or self.step == cfg.train.steps:
                self.save(last)
        progress.close()
        if stopped:
            self.save(last)
            log.warning("stopped by %s at step %d; checkpoint %s. Continue with train.resume=auto "
                        "(and the same train.run_name).", stopped, self.step, last)
        return stopped

    def _stop_requested(self, stop: StopSignals) -> str | None:
        """The signal any rank received (every rank stops at the same step), else None."""
        if not self.dist.enabled:
            return stop.received
        names = dist.all_gather(stop.received) if dist.host_any(stop.received is not None)[0] else []
        return next((n for n in names if n), None)

    def validate(self, tracker: Tracker) -> dict[str, float]:
        """Validation metrics over all ranks (each scores its share of the images); logged by rank 0,
        and the best checkpoint kept (a decision every rank takes alike). With several validation
        datasets each is logged as ``val/<label>/<metric>`` and ``val/<metric>`` is their mean."""
        e = self.cfg.eval
        if not self.val_loaders:  # built once: persistent workers are reused across validations
            for label, dataset in self.val_sets:
                shard = ShardSampler(min(len(dataset), e.max_images), rank=self.dist.rank,
                                     world_size=self.dist.world_size)
                self.val_loaders.append((label, self._loader(dataset, shard)))
        per_dataset, examples = {}, []
        for label, loader in self.val_loaders:
            result = evaluate(self.model, loader, self.runtime, max_images=e.max_images,
                              max_masks=e.max_masks, multimask=self.cfg.prompts.multimask, clicks=e.clicks,
                              seed=e.seed + self.dist.rank,
                              keep_examples=self.cfg.tracking.overlays if self.dist.is_main and not examples else 0)
            per_dataset[label] = result.metrics
            examples = examples or result.examples
        metrics = {f"val/{k}": v for k, v in mean_metrics(per_dataset).items()}
        if len(per_dataset) > 1:
            metrics.update({f"val/{label}/{k}": v for label, m in per_dataset.items() for k, v in m.items()})
        tracker.log_metrics(metrics, step=self.step)
        if examples:
            stacked = {k: torch.stack([ex[k] for ex in examples]) for k in examples[0]}
            tracker.log_overlays(stacked["image"], stacked["gt"], stacked["pred"], stacked["points"],
                                 stacked["point_labels"], step=self.step, tag="val")
        self._keep_best(metrics)
        log.info("%s", console.format_validation(self.step, {k: v for k, v in metrics.items() if k.count("/") == 1}))
        return metrics

    def validate_everything(self, tracker: Tracker) -> dict[str, float]:
        """"Segment everything" over the first ``eval.everything.max_images`` val images: each rank
        runs SAM's automatic mask generator on its share, rank 0 scores them all (COCO AP/AR, mSA
        over the threshold grid) and every rank gets the best pair's metrics."""
        from samft.engine import everything as amg_eval

        e = self.cfg.eval.everything
        files = amg_eval.annotation_files(amg_eval.sa1b_folder(self.val_set), e.max_images)
        pairs = list(itertools.product(e.iou_grid, e.stability_grid))
        was_training = self.model.training
        self.model.eval()
        try:
            generator = amg_eval.generator_from_config(self.model, e)
            mine = amg_eval.score_images(generator, files[self.dist.rank::self.dist.world_size], pairs, progress=False)
        finally:
            self.model.train(was_training)
        shares = dist.gather(mine)

        def summary() -> dict[str, float]:
            scores = [score for share in shares for score in share]
            return amg_eval.logged_metrics(amg_eval.summarise(scores, pairs, e.best_metric))

        metrics = {f"val/{k}": v for k, v in dist.on_main(summary).items()}
        tracker.log_metrics(metrics, step=self.step)
        self._keep_best(metrics)
        log.info("%s", console.format_validation(self.step, metrics))
        return metrics

    def _keep_best(self, metrics: dict[str, float]) -> None:
        key, sign = self.cfg.eval.best_metric, 1.0 if self.cfg.eval.best_mode == "max" else -1.0
        value = metrics.get(key)
        if value is None or math.isnan(value):
            return
        if self.best is None or sign * value > sign * self.best:
            self.best = value
            self.save(self.run_dir / "checkpoints" / "best.pt")

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where this one is (this rank's view;
        :meth:`save` adds every rank's own part under ``ranks``). A PEFT run's holds only the trained
        tensors under ``model`` and its method and base weights' identity under ``peft``."""
        model = ({"model": self.model.state_dict()} if not self.cfg.model.peft
                 else peft_checkpoint_fields(self.model, to_dict(self.cfg)["model"]["peft"]))
        return {
            **model,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "epoch_steps": self.epoch_steps,
            "nonfinite_in_row": self.nonfinite_in_row, "best": self.best,
            "ranks": [self._rank_state()],
            "world_size": self.dist.world_size,
            "mlflow_run_id": self.run_id,
            "config": to_yaml(self.cfg),
        }

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: random generators (clicks, augmentation) and epoch loss sums."""
        return {"rng": get_rng_state(self.click_generator),
                "epoch_sums": {k: v.detach().cpu() for k, v in self.epoch_sums.items()}}

    def load_state_dict(self, state: dict[str, Any], where: str = "The resumed checkpoint") -> None:
        saved = state.get("peft")
        if self.cfg.model.peft and saved is None:
            raise CheckpointError(f"{where} holds a full model, but the config sets model.peft: resume it without "
                                  "model.peft, or start the PEFT run afresh from it (model.checkpoint=...).")
        if saved is not None and not self.cfg.model.peft:
            raise CheckpointError(f"{where} is a PEFT checkpoint (model.peft={saved['method']}): resume with the "
                                  "same model.peft.")
        if saved is not None:
            check_base(saved["base"], self.model.samft_base, where)
            load_trainable(self.model, state["model"], where)
        else:
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.weighting.load_state_dict(state["weighting"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.epoch_steps = state["epoch_steps"]
        self.nonfinite_in_row, self.best = state["nonfinite_in_row"], state["best"]
        self._load_rank_state(state)
        self.run_id = state.get("mlflow_run_id")

    def _load_rank_state(self, state: dict[str, Any]) -> None:
        # Checkpoints of samft <= 0.1.0 hold one rank's random state and float epoch sums.
        ranks = state.get("ranks") or [{"rng": state["rng"], "epoch_sums": {
            k: torch.tensor(float(v), dtype=torch.float64) for k, v in state["epoch_sums"].items()}}]
        if len(ranks) != self.dist.world_size:
            log.warning("the checkpoint was written by %d ranks, this run has %d: data order and random "
                        "streams continue, but not exactly as an uninterrupted run would", len(ranks),
                        self.dist.world_size)
        own = ranks[self.dist.rank % len(ranks)]
        set_rng_state(own["rng"], self.click_generator)
        device = self.runtime.device
        self.epoch_sums = {k: v.to(device) for k, v in own["epoch_sums"].items()}

    def save(self, path: Path) -> Path:
        """Write the training state atomically. Every rank calls it at the same step: each hands
        rank 0 its own part (random states, epoch sums), rank 0 writes, the others wait."""
        ranks = dist.gather(self._rank_state())
        if self.dist.is_main:
            save_atomic({**self.state_dict(), "ranks": ranks}, path)
        dist.barrier()
        return path

    # -- helpers --------------------------------------------------------------------------------
    def _tracker(self) -> Tracker:
        if not self.dist.is_main:
            return Tracker.disabled()
        tracker = Tracker.start(self.cfg.tracking, config=to_dict(self.cfg), project_root=self.root,
                                resume_run_id=self.run_id, run_name=self.run_dir.name,
                                tags={"samft.run_dir": str(self.run_dir),
                                      **{f"samft.{k}": str(v) for k, v in self.param_counts.items()},
                                      "samft.dataset_fingerprint": dataset_fingerprint(self.train_set)})
        log.info("run folder %s; %s", self.run_dir, tracker.ui_hint)
        return tracker

    def _lr_record(self) -> dict[str, float]:
        return {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}

    def _run_dir(self) -> Path:
        """``output_dir/run_name``; without a run name, prefix and time (or, to resume, the latest run).

        Rank 0 chooses the name and every rank takes it (their clocks and filesystems may differ);
        the config records it; only rank 0 creates the folder and writes ``config.yaml`` into it."""
        out = self.root / self.cfg.train.output_dir
        name = dist.on_main(lambda: self._run_name(out))
        with read_write(self.cfg):
            self.cfg.train.run_name = name
        run_dir = out / name
        if self.dist.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(to_yaml(self.cfg))
        return run_dir

    def _run_name(self, out: Path) -> str:
        name = self.cfg.train.run_name
        if name is None and self.cfg.train.resume == "auto":
            latest = find_resume_checkpoint("auto", out, search_runs=True)
            if latest is not None:
                return latest.parent.parent.name
        if name:
            return name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return f"{self.run_prefix}-{stamp}" if self.run_prefix else stamp


def weights_of(weighting: torch.nn.Module, step: int) -> dict[str, float] | None:
    """The weights a strategy will apply at ``step`` when it can say so without side effects
    (``fixed``); None otherwise, and gradient norms are then reported unweighted."""
    weights_at = getattr(weighting, "weights_at", None)
    return weights_at(step) if callable(weights_at) else None
