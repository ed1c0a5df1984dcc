"""The train and evaluate commands; ``tools/*.py`` are thin wrappers around these functions (every
command runs through :func:`samft.entry.run_cli`)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from samft.entry import is_main_process, run_cli

USAGE = """usage: python tools/train.py CONFIG.yaml [key=value ...]

Fine-tune SAM as CONFIG says; key=value pairs override it (e.g. train.steps=200 optim.lr=1e-4).
Set SAMFT_DEBUG=1 to see full tracebacks."""


def _train(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from samft.config import load

    cfg = load(argv[0], argv[1:])  # before the engine's imports: a bad value is reported at once
    from samft.engine.threads import apply_threads
    from samft.engine.trainer import Trainer

    # Here, not in Trainer: a process-wide setting belongs to the process's entry point (tests and
    # benchmarks that build a Trainer keep the thread count they chose).
    logging.getLogger("samft.train").info("%s", apply_threads(cfg.train.threads).describe())
    # Without train.run_name the run is named <config name>-<time>: runs of different configs are
    # told apart at a glance. The Trainer picks the time on rank 0 (ranks' clocks differ).
    result = Trainer(cfg, project_root=Path.cwd(), run_prefix=Path(argv[0]).stem).fit()
    if not is_main_process():  # quiet, but with the same exit status as rank 0
        return 128 + int(getattr(signal, result.stopped_by)) if result.stopped_by else 0
    from samft.engine.console import RunInfo, run_summary, shown_path

    python = shown_path(Path(sys.executable))
    if result.stopped_by:
        print(f"\nStopped by {result.stopped_by} at step {result.steps}; checkpoint {result.checkpoint}. "
              f"Resume with: {python} tools/train.py {' '.join(argv)} train.resume=auto "
              f"train.run_name={result.run_dir.name}")
        return 128 + int(getattr(signal, result.stopped_by))
    info = RunInfo(result.run_dir, result.steps, result.val_metrics, **_mlflow_run(cfg, result.run_id))
    print("\n" + "\n".join(run_summary(info, python=python)))
    return 0


def _mlflow_run(cfg, run_id: str | None) -> dict[str, str | None]:
    """The MLflow run's name and browser URL for the summary; nothing when tracking is off."""
    if not run_id:
        return {}
    from mlflow.tracking import MlflowClient

    from samft.tracking import store

    uri = store.resolve_tracking_uri(cfg.tracking.uri, Path.cwd())
    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception:  # the server went away after training: the summary must still print
        return {"experiment": cfg.tracking.experiment}
    return {"experiment": cfg.tracking.experiment, "run_name": run.info.run_name,
            "run_url": store.run_url(uri, run.info.experiment_id, run_id)}


EVAL_USAGE = """usage: python tools/evaluate.py CONFIG.yaml model.checkpoint=PATH [key=value ...] [--json FILE]

Evaluate a checkpoint (samft's or a SAM .pth) on data.val: mIoU from one centre point, one box and
after eval.clicks correction clicks, boundary IoU, IoU-head calibration and stability statistics.
--mode everything: automatic masks instead (AP, AR@100/1000, mSA over a threshold sweep; --mode everything -h)."""


def _evaluate(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(EVAL_USAGE)
        return 0 if argv else 2
    if "--mode" in argv:  # "segment everything" evaluation: samft/engine/everything.py
        at = argv.index("--mode")
        mode, argv = argv[at + 1:at + 2], argv[:at] + argv[at + 2:]
        if mode == ["everything"]:
            from samft.engine.everything_cli import parser

            parser().parse_intermixed_args(argv)  # -h and usage errors end here, before torch loads
            from samft.engine.everything import everything_main

            return everything_main(argv)
        if mode != ["prompts"]:
            from samft.config import ConfigError
            raise ConfigError(f"--mode {' '.join(mode) or '(missing)'}: use --mode prompts (default) or everything.")
    import json

    from samft.config import ConfigError, load

    json_out = None
    if "--json" in argv:
        at = argv.index("--json")
        json_out, argv = Path(argv[at + 1]), argv[:at] + argv[at + 2:]
    cfg = load(argv[0], argv[1:])  # before the engine's imports: a bad value is reported at once
    if not cfg.data.val:
        raise ConfigError("Evaluation reads data.val: set data.val=PATH to an SA-1B folder (or a dataset spec).")
    from torch.utils.data import DataLoader

    from samft.data import collate_masks
    from samft.engine.build import datasets_from_config, model_from_config
    from samft.engine.evaluate import evaluate, mean_metrics
    from samft.engine.runtime import make_runtime

    root = Path.cwd()
    runtime = make_runtime(cfg.train.device, cfg.train.precision)
    model = model_from_config(cfg, root).to(runtime.device)
    e = cfg.eval
    per_dataset = {}
    for label, _, dataset in datasets_from_config(cfg, root, cfg.data.val, seed=e.seed, train=False):
        loader = DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                            collate_fn=collate_masks)
        per_dataset[label] = evaluate(model, loader, runtime, max_images=e.max_images, max_masks=e.max_masks,
                                      multimask=cfg.prompts.multimask, clicks=e.clicks, seed=e.seed).metrics
    metrics = mean_metrics(per_dataset)
    if len(per_dataset) > 1:  # the means, and each dataset's as <label>/<metric> (as training logs them)
        metrics.update({f"{label}/{k}": v for label, m in per_dataset.items() for k, v in m.items()})
    width = max(len(k) for k in metrics)
    for key, value in sorted(metrics.items()):
        print(f"{key:<{width}}  {value:.4f}")
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    return run_cli(_evaluate, sys.argv[1:] if argv is None else argv)


def train_main(argv: list[str] | None = None) -> int:
    return run_cli(_train, sys.argv[1:] if argv is None else argv)
