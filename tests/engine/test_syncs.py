"""The training step's host-device synchronisations, counted as a GPU would see them."""

from pathlib import Path

import pytest
import torch

import samft.losses.sam as sam_module
from samft.config import load
from samft.engine.syncs import SyncCounter, optimizer_step_counters
from samft.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """The loss as it runs on an accelerator: large chunks, dense backward, no value checks."""
    monkeypatch.setattr(sam_module, "chunk_plan", lambda device: sam_module.ACCELERATOR_PLAN)
    monkeypatch.setattr(sam_module, "_checkable", lambda tensor: False)


def recipe_trainer(demo_data, tmp_path, *overrides):
    """SAM's recipe as configured (11 rounds: 1 prompt + 8 clicks + 2 extra, 1 image per step)."""
    cfg = load(REPO / "configs" / "sam_ft.yaml", [
        f"data.train={demo_data / 'train'}", "data.val=null", "data.num_workers=0", "model.name=vit_tiny",
        "model.image_size=64", "data.max_masks=8", "tracking.enabled=false", "train.progress=false",
        f"train.output_dir={tmp_path}", "schedule.warmup_steps=1", *overrides])
    return Trainer(cfg)


def count(trainer, fn):
    # torch.optim's step counters live on the CPU: reading them is no device sync (GradNorm has an
    # optimiser of its own for its weights).
    host = optimizer_step_counters(trainer.optimizer)
    if hasattr(trainer.weighting, "_optimizer"):
        host += optimizer_step_counters(trainer.weighting._optimizer)
    with SyncCounter(host) as counter:
        out = fn()
    return counter, out


@pytest.mark.parametrize("weighting", ["{name: fixed}", "{name: uncertainty}", "{name: dwa}", "{name: gradnorm}"])
def test_a_training_step_reads_the_device_once(demo_data, tmp_path, as_on_a_gpu, weighting):
    trainer = recipe_trainer(demo_data, tmp_path, f"weighting={weighting}")
    assert trainer.forward.rounds.total == 11
    batch = next(trainer._batches(trainer._loader(trainer.train_set, trainer.sampler)))
    trainer.train_step(batch)  # creates the optimiser state
    counter, result = count(trainer, lambda: trainer.train_step(batch))
    assert result.stepped
    # The budget: the go/no-go flag (non-finite loss or gradient on any rank), nothing else.
    assert dict(counter.syncs) == {"aten::_local_scalar_dense": 1}, counter.syncs
    assert all(torch.is_tensor(v) for k, v in result.values.items() if k.startswith("loss"))  # on the device
    counter, record = count(trainer, lambda: trainer.record(result))
    assert counter.total_syncs == 0  # one stacked .tolist(), no per-value float()
    assert {"loss/total", "loss/focal", "weight/focal", "grad_norm"} <= set(record)


def test_the_counter_sees_item_nonzero_and_bool_indexing():
    x = torch.arange(6.0)
    with SyncCounter() as counter:
        float(x.sum())
        x.nonzero()
        x[x > 2]
        torch.repeat_interleave(torch.tensor([1, 2]))
        x.sum() * 2  # stays on the device
    assert counter.syncs["aten::_local_scalar_dense"] == 1
    assert counter.syncs["aten::nonzero"] == 1
    assert counter.syncs["aten::index"] == 1  # boolean indexing runs a nonzero inside
    assert counter.syncs["aten::repeat_interleave"] == 1
    step = torch.tensor(3.0)
    with SyncCounter(host_tensors=[step]) as counter:
        step.item()  # torch.optim's step counters live on the host: no sync
    assert counter.total_syncs == 0
