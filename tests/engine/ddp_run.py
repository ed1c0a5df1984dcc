"""Helper run by test_ddp.py under torchrun (2 gloo ranks on CPU): one training run with an optional fault.

usage: python -m torch.distributed.run --nproc_per_node=2 ddp_run.py DATA_DIR OUT_DIR FAULT [key=value ...]

FAULT is ``none``, ``nan@K`` (rank 1's loss is NaN on its K-th call; ``nan@*``: on every call),
``sigterm@K`` (rank 1 sends itself SIGTERM during its K-th loss call) or ``clock`` (rank 1's clock
names another run folder than rank 0's). Each rank writes OUT_DIR/rank<R>.pt with its final model
weights, weighting state, step, logged history and validation metrics (or the TrainingError that
stopped it, and then exits 3), then waits for the other rank's file before it
exits (torchrun ends the workers still running once one exits non-zero); the process exits 143 when a
signal stopped it.
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from samft.config import load  # noqa: E402
from samft.engine import trainer as trainer_module  # noqa: E402
from samft.engine.trainer import Trainer, TrainingError  # noqa: E402
from samft.losses import call_loss  # noqa: E402


class Fault:
    """Wraps the loss; on rank 1 only, poisons or signals on the K-th call."""

    def __init__(self, loss, kind: str, call: int):
        self.loss, self.kind, self.call, self.count = loss, kind, call, 0

    def __call__(self, logits, target, **extras):
        self.count += 1
        out = call_loss(self.loss, logits, target, **extras)
        if self.call in (self.count, "*"):
            if self.kind == "nan":
                out = {**out, "focal": out["focal"] * float("nan")}
            else:
                os.kill(os.getpid(), signal.SIGTERM)
        return out


def main(data: str, out: str, fault: str, *overrides: str) -> int:
    rank = int(os.environ.get("RANK", "0"))
    cfg = load(REPO / "configs" / "demo.yaml", [
        f"data.train={data}/train", f"data.val={data}/val", "data.num_workers=0", "data.max_masks=3",
        "data.batch_size=1", "model.image_size=64", "prompts.correction_clicks=1", "prompts.extra_rounds=1",
        "train.progress=false", "tracking.enabled=false", f"train.output_dir={out}/runs", "train.run_name=ddp",
        "train.val_every=2", "train.checkpoint_every=1000", "eval.max_images=4", "eval.max_masks=2",
        "eval.clicks=1", "schedule={name: warmup, warmup_steps: 2, after: {name: cosine, start: 1.0, end: 0.1, "
        "total_steps: 20}}", *overrides,
    ])
    if fault == "clock" and rank == 1:
        trainer_module.time.strftime = lambda fmt, *a: "19700101-000000"
    trainer = Trainer(cfg)
    if fault.startswith(("nan@", "sigterm@")) and rank == 1:
        kind, call = fault.split("@")
        trainer.loss_fn = Fault(trainer.loss_fn, kind, call if call == "*" else int(call))
    try:
        result = trainer.fit()
    except TrainingError as err:
        torch.save({"error": str(err), "nonfinite_in_row": trainer.nonfinite_in_row}, Path(out) / f"rank{rank}.pt")
        wait_for_other(out, rank)
        return 3
    torch.save({"model": trainer.model.state_dict(), "weighting": trainer.weighting.state_dict(),
                "step": result.steps, "stopped_by": result.stopped_by, "val_metrics": result.val_metrics,
                "history": result.history, "nonfinite_in_row": trainer.nonfinite_in_row,
                "run_dir": str(result.run_dir)},
               Path(out) / f"rank{rank}.pt")
    wait_for_other(out, rank)
    return 128 + signal.SIGTERM if result.stopped_by else 0


def wait_for_other(out: str, rank: int) -> None:
    """Exit only once the other rank wrote its file: torchrun ends the workers still running once one
    exits non-zero."""
    other = Path(out) / f"rank{1 - rank}.pt"
    deadline = time.monotonic() + 120
    while not other.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
