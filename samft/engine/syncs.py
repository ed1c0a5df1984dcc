"""Count what a training step asks of the device: aten ops, and the ops that make the host wait.

On a GPU, an op whose result the host must read (``.item()``, ``bool(t)``, ``nonzero``, ``unique``,
boolean indexing, ...) stops the host until the device has finished everything queued before it, so
the host cannot queue the next kernels while the device works. The counter recognises those ops by
name, so it measures a step's syncs on the CPU too, where they cost nothing: what it reports is what
the same step would do on a GPU (with the loss's accelerator chunking, see
:func:`samft.losses.sam.chunk_plan`).

    with SyncCounter(optimizer_step_counters(trainer.optimizer)) as counter:
        trainer.train_step(batch)
    counter.syncs      # {"aten::_local_scalar_dense": 1}
    counter.ops        # every aten op, e.g. ~3,900 per round
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops whose output the host reads, or whose output shape depends on the data.
SYNCING = frozenset({
    "aten::_local_scalar_dense",  # .item(), float(t), int(t), bool(t), .tolist()
    "aten::nonzero", "aten::nonzero_static", "aten::argwhere",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::masked_select",
    "aten::equal", "aten::allclose", "aten::is_nonzero",
})
# repeat_interleave with a tensor of counts and no output_size must read the counts' sum.
_REPEAT = "aten::repeat_interleave"
_INDEXING = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})


def _has_mask_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class SyncCounter(TorchDispatchMode):
    """A dispatch mode that counts aten ops and host-device synchronisations while active.

    Args:
        host_tensors: Tensors that live in host memory even on a GPU run, whose reads are therefore
            no sync: e.g. :func:`optimizer_step_counters` (torch.optim keeps them on the CPU unless
            ``capturable`` or ``fused``).

    Attributes:
        ops: Calls per aten op name (every op).
        syncs: Calls per op that would synchronise with a GPU.
    """

    def __init__(self, host_tensors: list[torch.Tensor] = ()) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self._host = {t.data_ptr() for t in host_tensors}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops[name] += 1
        if name in SYNCING and not (args and torch.is_tensor(args[0]) and args[0].data_ptr() in self._host):
            self.syncs[name] += 1
        elif name == _REPEAT and len(args) == 1 and kwargs.get("output_size") is None:
            self.syncs[name] += 1
        elif name in _INDEXING and _has_mask_index(args):
            self.syncs[name] += 1  # a boolean mask index is turned into positions by nonzero
        return func(*args, **kwargs)

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())


def optimizer_step_counters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The per-parameter ``step`` tensors of an optimizer that keeps them on the host (not
    ``capturable``/``fused``): reading them costs no device sync on a GPU."""
    if any(g.get("capturable") or g.get("fused") for g in optimizer.param_groups):
        return []
    return [s["step"] for s in optimizer.state.values() if torch.is_tensor(s.get("step"))]
