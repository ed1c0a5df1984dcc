"""The training loop: build everything from the config, then run steps you can read top to bottom."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from samft.config import ConfigError, to_dict, to_yaml
from samft.data import SA1BDataset, collate_masks
from samft.engine import console
from samft.engine import distributed as dist
from samft.engine.build import dataset_fingerprint, dataset_from_config, model_from_config
from samft.engine.checkpoint import find_resume_checkpoint, load_checkpoint, save_atomic
from samft.engine.embedding_cache import EmbeddingCache
from samft.engine.evaluate import evaluate
from samft.engine.interactive import InteractiveForward, Rounds, combine_rounds
from samft.engine.optim import build_lr_scheduler, build_optimizer, param_groups
from samft.engine.rng import get_rng_state, set_rng_state
from samft.engine.runtime import make_runtime, seed_everything
from samft.engine.sampler import ResumableSampler
from samft.engine.signals import StopSignals
from samft.engine.step import encode_images, loss_targets, to_device
from samft.losses import call_loss, loss_stats, loss_terms
from samft.models import checkpoint_activations, freeze
from samft.registry import LOSSES, SCHEDULES, WEIGHTINGS
from samft.tracking import Tracker
from samft.weighting.analysis import resolve_params, term_grad_norms

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
    stopped_by: str | None = None  # signal name when preempted, else None


class Trainer:
    """Fine-tunes SAM on an SA-1B-style dataset as the config says.

    Args:
        cfg: A config from :func:`samft.config.load`.
        project_root: Folder holding the embedded MLflow store and relative paths.
    """

    def __init__(self, cfg: DictConfig, project_root: Path | str | None = None) -> None:
        self.cfg = cfg
        if cfg.train.grad_accum < 1:
            raise ConfigError(f"train.grad_accum={cfg.train.grad_accum}: it must be >= 1 (1 = no accumulation).")
        self.root = Path(project_root or Path.cwd())
        self.dist = dist.from_env()
        runtime = make_runtime(cfg.train.device, cfg.train.precision)
        self.runtime = type(runtime)(dist.init(runtime.device, self.dist), runtime.precision)
        seed_everything(cfg.train.seed)
        self.run_dir = self._run_dir()
        self.train_set = self._dataset(cfg.data.train, seed=cfg.train.seed)
        self.val_set = self._dataset(cfg.data.val, seed=cfg.eval.seed, train=False) if cfg.data.val else None
        self.sampler = ResumableSampler(len(self.train_set), seed=cfg.train.seed, rank=self.dist.rank,
                                        world_size=self.dist.world_size)
        self.model = self._model()
        self.loss_fn = LOSSES.build(cfg.loss)
        self.terms = self._probe_terms()
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
                                                     resolution=cfg.train.loss_resolution), rounds)
        self.embedding_cache = self._embedding_cache()
        self.click_generator = torch.Generator(self.runtime.device).manual_seed(cfg.train.seed + self.dist.rank)
        self.step = self.epoch = self.position = 0  # position: batches drawn in the current epoch
        self.epoch_sums: dict[str, float] = {}  # per-term loss sums of the epoch, for weighting.epoch_end
        self.epoch_steps = 0
        self.nonfinite_in_row = 0
        self.run_id: str | None = None
        self.best: float | None = None
        self.val_loader: DataLoader | None = None

    # -- building ---------------------------------------------------------------------------
    def _dataset(self, root: str, *, seed: int, train: bool = True) -> SA1BDataset:
        return dataset_from_config(self.cfg, self.root, root, seed=seed, train=train)

    def _model(self) -> torch.nn.Module:
        model = model_from_config(self.cfg, self.root)
        m = self.cfg.model
        freeze(model, image_encoder=m.freeze_image_encoder, prompt_encoder=m.freeze_prompt_encoder,
               mask_decoder=m.freeze_mask_decoder)
        if m.activation_checkpointing:
            checkpoint_activations(model)
        return model.to(self.runtime.device)

    def _embedding_cache(self) -> EmbeddingCache | None:
        m = self.cfg.model
        if not m.embedding_cache:
            return None
        if not m.freeze_image_encoder:
            raise ConfigError("model.embedding_cache needs model.freeze_image_encoder=true: a trained encoder "
                              "changes its embeddings every step.")
        if self.cfg.data.augment:
            raise ConfigError("model.embedding_cache needs data.augment: [] (augmented images differ every "
                              "epoch, so their embeddings cannot be reused).")
        return EmbeddingCache(self.root / m.embedding_cache, self.model.image_encoder, m.image_size)

    def _cached_embeddings(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with ``embeddings`` from the cache (the misses encoded once and stored)."""
        if self.embedding_cache is None:
            return batch

        def encode(rows: list[int]) -> torch.Tensor:
            part = {"images": batch["images"][rows], "valid": batch["valid"][rows]}
            with self.runtime.autocast():
                return encode_images(self.model, part).float()

        files = [meta["file"] for meta in batch["meta"]]
        embeddings = self.embedding_cache.embeddings(files, encode)
        return {**batch, "embeddings": embeddings.to(self.runtime.device, torch.float32)}

    def _wrap(self, module: InteractiveForward, rounds: Rounds) -> torch.nn.Module:
        if not self.dist.enabled:
            return module
        # Without mask feedback the mask-prompt encoder gets no gradient, and DDP must be told.
        unused = rounds.total == 1 or not rounds.feed_back_mask
        device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=unused)

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

    def _terms(self, out: torch.Tensor | dict[str, Any]) -> dict[str, torch.Tensor]:
        """This step's value of every term found by the probe (a term may lack a gradient in a
        step, e.g. the IoU term of a batch of empty targets; it is then a constant, not missing)."""
        if isinstance(out, torch.Tensor):
            return {"loss": out}
        return {k: out[k] for k in self.terms}

    def _loader(self, dataset: SA1BDataset, sampler: ResumableSampler | None = None) -> DataLoader:
        d = self.cfg.data
        return DataLoader(dataset, batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers,
                          collate_fn=collate_masks, drop_last=sampler is not None,
                          persistent_workers=d.num_workers > 0, pin_memory=self.runtime.device.type == "cuda")

    def _batches(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        """Batches forever, epoch after epoch, starting at the (possibly restored) epoch and position."""
        while True:
            self.train_set.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, start=self.position * self.cfg.data.batch_size)
            usable = False
            for batch in loader:
                self.position += 1
                if batch["masks"].shape[0] == 0:
                    continue
                usable = True
                yield batch
            if not usable and self.position > 0:
                raise TrainingError(f"No usable mask in {self.train_set.root}: every image was skipped.")
            self._end_epoch()

    def _end_epoch(self) -> None:
        """Tell the weighting the epoch's mean loss per term (DWA adapts its weights from these)."""
        if self.epoch_steps:
            self.weighting.epoch_end({k: v / self.epoch_steps for k, v in self.epoch_sums.items()})
        self.epoch, self.position, self.epoch_sums, self.epoch_steps = self.epoch + 1, 0, {}, 0

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, float]:
        """Forward (all interactive rounds), loss, weighting, backward and one optimiser step.

        Args:
            batch: One collated batch, or ``train.grad_accum`` of them whose gradients accumulate.
                Every micro-batch's loss is normalised by the masks of all of them (summed over ranks),
                so accumulating k batches of B images gives the gradient of one batch of k x B.
        """
        micro = [to_device(b, self.runtime.device) for b in (batch if isinstance(batch, list) else [batch])]
        masks = sum(b["masks"].shape[0] for b in micro)
        num_masks = dist.num_masks_across_ranks(masks, self.runtime.device)
        sums: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.forward.no_sync()
            with sync:
                total, terms, weights, out, per_round, analysis = self._micro_step(mb, num_masks)
                if not torch.isfinite(total):
                    return self._skip_nonfinite(terms)
                self.scaler.scale(total).backward()
            sums = {k: sums.get(k, 0.0) + v.detach() for k, v in {"total": total, **terms}.items()}
        self.nonfinite_in_row = 0
        grad_norm = self._optimizer_step()
        for k in terms:
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + float(sums[k])
        self.epoch_steps += 1
        record = {"loss/total": float(sums.pop("total")), "grad_norm": grad_norm, "masks": float(masks),
                  "skipped_files": float(sum(b.get("skipped", 0) for b in micro))}
        record.update({f"loss/{k}": float(v) for k, v in sums.items()})
        record.update({f"weight/{k}": float(v) for k, v in weights.items()})
        record.update({f"grad_norm/{k}": v for k, v in analysis.items()})
        record.update({f"stat/{k}": v for k, v in loss_stats(out).items()})
        for r in sorted({0, len(per_round) - 1}):  # first vs last round (of the last micro-batch)
            record.update({f"loss_round{r}/{k}": float(v.detach()) for k, v in per_round[r].items()})
        return record

    def _micro_step(self, batch: dict[str, Any], num_masks: float):
        """Forward and weighted loss of one micro-batch (no backward)."""
        batch = self._cached_embeddings(batch)
        with self.runtime.autocast():
            predictions = self.forward(batch, self.click_generator)
        targets = loss_targets(batch, predictions[0].logits.shape[-1])
        target = targets.pop("target")
        per_round = []
        for pred in predictions:
            out = call_loss(self.loss_fn, pred.logits, target, iou_pred=pred.iou_pred, candidates=pred.candidates,
                            num_masks=num_masks, step=self.step, epoch=self.epoch, **targets)
            per_round.append(self._terms(out))
        terms = combine_rounds(per_round, self.cfg.prompts.round_loss)
        analysis = self._term_grad_norms(terms, weights_of(self.weighting, self.step))
        total, weights = self.weighting(terms, self.step)
        return total, terms, weights, out, per_round, analysis

    def _term_grad_norms(self, terms: dict[str, torch.Tensor], weights: dict[str, float] | None) -> dict[str, float]:
        """Per-term gradient norms at the analysis layer every ``train.grad_analysis_every`` steps
        (seed 004's ``analyze_loss_gradients``, done with autograd.grad so the step's backward is untouched)."""
        every = self.cfg.train.grad_analysis_every
        if not every or self.step % every:
            return {}
        params = [p for p in resolve_params(self.model, self.cfg.train.grad_analysis_layer) if p.requires_grad]
        if not params:
            return {}
        return term_grad_norms(terms, params, weights)

    def _optimizer_step(self) -> float:
        """Unscale, sync the weighting's own gradients across ranks, clip, step; returns the pre-clip norm."""
        self.scaler.unscale_(self.optimizer)
        if self.dist.enabled:  # the weighting is not inside DDP: average its gradients by hand
            for p in self.weighting.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.dist.world_size
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        return grad_norm

    def _skip_nonfinite(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_row += 1
        limit = self.cfg.train.max_nonfinite_steps
        bad = {k: float(v.detach()) for k, v in terms.items()}
        log.warning("step %d: non-finite loss %s; step skipped (%d in a row)", self.step, bad, self.nonfinite_in_row)
        if self.nonfinite_in_row >= limit:
            raise TrainingError(
                f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step} (last terms: {bad}); "
                "stopping. Lower optim.lr, set optim.grad_clip, or use train.precision=bf16/fp32 instead of fp16."
            )
        return {"nonfinite_skipped": 1.0}

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train for ``train.steps`` steps with periodic validation and checkpoints; returns the run.

        SIGTERM/SIGINT stop the loop after the current step and write a checkpoint first.
        """
        cfg = self.cfg
        resume = find_resume_checkpoint(cfg.train.resume, self.run_dir / "checkpoints")
        if resume is not None:
            self.load_state_dict(load_checkpoint(resume))
            log.info("resumed from %s at step %d", resume, self.step)
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
            if stopped_by is None and cfg.tracking.log_checkpoint and self.dist.is_main:
                tracker.log_artifact(best if best.is_file() else last, "checkpoints")
            tracker.log_curves()
        finally:
            tracker.close(status)
            dist.shutdown()  # the process group init() joined in __init__
        return FitResult(self.run_dir, self.step, history, val_metrics, last, tracker.run_id, tracker.ui_hint,
                         stopped_by)

    def _loop(self, tracker, history, val_metrics, last, stop) -> str | None:
        cfg = self.cfg
        batches = self._batches(self._loader(self.train_set, self.sampler))
        progress = tqdm(total=cfg.train.steps, initial=self.step, desc="train", unit="step",
                        # None: tqdm shows the bar on a terminal only, not in batch-job logs
                        disable=None if cfg.train.progress and self.dist.is_main else True)
        started, images = time.perf_counter(), 0
        while self.step < cfg.train.steps:
            if stop.received:
                break
            micro = [next(batches) for _ in range(cfg.train.grad_accum)]
            record = self.train_step(micro)
            if "nonfinite_skipped" in record:  # no optimiser step was taken: the step count stays
                continue
            self.step += 1
            images += sum(b["images"].shape[0] for b in micro)
            progress.update(1)
            if self.step % cfg.tracking.log_every == 0 or self.step == cfg.train.steps:
                record.update(self._lr_record())
                record["images_per_s"] = images * self.dist.world_size / max(time.perf_counter() - started, 1e-9)
                started, images = time.perf_counter(), 0
                tracker.log_metrics(record, step=self.step)
                history.append({"step": float(self.step), **record})
                progress.set_postfix(loss=f"{record.get('loss/total', float('nan')):.4f}")
                if progress.disable and self.dist.is_main:  # no bar (batch job, no terminal): a log line
                    log.info("%s", console.format_step(self.step, cfg.train.steps, record))
            if self.val_set is not None and (self.step % cfg.train.val_every == 0 or self.step == cfg.train.steps):
                val_metrics.update(self.validate(tracker))
            if self.step % cfg.train.checkpoint_every == 0 or self.step == cfg.train.steps:
                self.save(last)
        progress.close()
        if stop.received:
            self.save(last)
            log.warning("stopped by %s at step %d; checkpoint %s. Continue with train.resume=auto "
                        "(and the same train.run_name).", stop.received, self.step, last)
        return stop.received

    def validate(self, tracker: Tracker) -> dict[str, float]:
        """Validation metrics on the main rank (logged, and the best checkpoint kept)."""
        if not self.dist.is_main:
            return {}
        e = self.cfg.eval
        if self.val_loader is None:  # built once: persistent workers are reused across validations
            self.val_loader = self._loader(self.val_set)
        result = evaluate(self.model, self.val_loader, self.runtime, max_images=e.max_images,
                          max_masks=e.max_masks, multimask=self.cfg.prompts.multimask, clicks=e.clicks,
                          seed=e.seed, keep_examples=self.cfg.tracking.overlays)
        metrics = {f"val/{k}": v for k, v in result.metrics.items()}
        tracker.log_metrics(metrics, step=self.step)
        if result.examples:
            stacked = {k: torch.stack([ex[k] for ex in result.examples]) for k in result.examples[0]}
            tracker.log_overlays(stacked["image"], stacked["gt"], stacked["pred"], stacked["points"],
                                 stacked["point_labels"], step=self.step, tag="val")
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
        """Everything a resumed run needs to continue exactly where this one is."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "epoch_sums": self.epoch_sums, "epoch_steps": self.epoch_steps,
            "nonfinite_in_row": self.nonfinite_in_row, "best": self.best,
            "rng": get_rng_state(self.click_generator),
            "mlflow_run_id": self.run_id,
            "config": to_yaml(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.weighting.load_state_dict(state["weighting"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.epoch_sums, self.epoch_steps = dict(state["epoch_sums"]), state["epoch_steps"]
        self.nonfinite_in_row, self.best = state["nonfinite_in_row"], state["best"]
        set_rng_state(state["rng"], self.click_generator)
        self.run_id = state.get("mlflow_run_id")

    def save(self, path: Path) -> Path:
        """Write the training state atomically (main rank only; other ranks wait for it)."""
        if self.dist.is_main:
            save_atomic(self.state_dict(), path)
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    # -- helpers --------------------------------------------------------------------------------
    def _tracker(self) -> Tracker:
        if not self.dist.is_main:
            return Tracker.disabled()
        tracker = Tracker.start(self.cfg.tracking, config=to_dict(self.cfg), project_root=self.root,
                                resume_run_id=self.run_id, run_name=self.run_dir.name,
                                tags={"samft.run_dir": str(self.run_dir),
                                      "samft.dataset_fingerprint": dataset_fingerprint(self.train_set)})
        log.info("run folder %s; %s", self.run_dir, tracker.ui_hint)
        return tracker

    def _lr_record(self) -> dict[str, float]:
        return {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}

    def _run_dir(self) -> Path:
        """``output_dir/run_name``; without a run name, a timestamp (or, to resume, the latest run)."""
        out = self.root / self.cfg.train.output_dir
        name = self.cfg.train.run_name
        if name is None and self.cfg.train.resume == "auto":
            latest = find_resume_checkpoint("auto", out, search_runs=True)
            if latest is not None:
                return latest.parent.parent
        run_dir = out / (name or time.strftime("%Y%m%d-%H%M%S"))
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            (run_dir / "config.yaml").write_text(to_yaml(self.cfg))
        return run_dir


def weights_of(weighting: torch.nn.Module, step: int) -> dict[str, float] | None:
    """The weights a strategy will apply at ``step`` when it can say so without side effects
    (``fixed``); None otherwise, and gradient norms are then reported unweighted."""
    weights_at = getattr(weighting, "weights_at", None)
    return weights_at(step) if callable(weights_at) else None
