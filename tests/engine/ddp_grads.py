"""Helper run by test_training_state.py (plain or under torchrun): one training step's gradients.

usage: python ddp_grads.py DATA_DIR OUT_FILE BATCH_SIZE
Writes the model's gradients after the step's backward (after DDP's all-reduce when distributed).
"""

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from samft.config import load  # noqa: E402
from samft.engine.trainer import Trainer  # noqa: E402


def main(data: str, out: str, batch_size: str) -> None:
    cfg = load(REPO / "configs" / "demo.yaml", [
        f"data.train={data}", "data.val=null", "data.num_workers=0", "data.max_masks=16", "model.image_size=64",
        "prompts.correction_clicks=0", "prompts.extra_rounds=0", "train.progress=false", "tracking.enabled=false",
        f"train.output_dir={Path(out).parent / 'runs'}", f"data.batch_size={batch_size}",
    ])
    trainer = Trainer(cfg)
    captured = {}

    def capture_instead_of_stepping(*args, **kwargs) -> None:
        captured.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                         if p.grad is not None})

    trainer.optimizer.step = capture_instead_of_stepping
    batches = trainer._batches(trainer._loader(trainer.train_set, trainer.sampler))
    batch = next(batches)
    trainer.train_step(batch)
    counts = torch.zeros(trainer.dist.world_size, dtype=torch.long)
    counts[trainer.dist.rank] = batch.masks.shape[0]
    if trainer.dist.enabled:
        torch.distributed.all_reduce(counts)
    if trainer.dist.is_main:
        torch.save({"grads": captured, "masks_per_rank": counts}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
