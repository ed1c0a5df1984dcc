"""Training-step time of the loss-weighting strategies relative to ``fixed``, on the tiny SAM.

One step = image encoder + prompt encoder + mask decoder forward, SAM's loss (focal / dice / IoU
terms from ``LOSSES.build({"name": "sam"})``), the weighting strategy, backward and an AdamW step.
Every strategy trains its own copy of the same model on the same synthetic batch. The strategies
take turns (a round of ``--steps`` steps each, ``--rounds`` times) so that load from other
processes hits all of them alike; the table gives the median wall and CPU time of a step and
their ratios to ``fixed`` measured in the same run, and the CPU time spent inside the strategy
call (GradNorm's extra per-term backward passes happen there); the last column adds that time to
``fixed``'s step, an estimate of the ratio that does not depend on the load of the machine.

    python benchmarks/bench_weighting.py [--quick] [--image-size 256] [--images 2] [--masks 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch

from samft.models import build_model, decode_masks, output_candidates, preprocess
from samft.registry import LOSSES, WEIGHTINGS

STRATEGIES = {
    "fixed": {"name": "fixed"},
    "uncertainty": {"name": "uncertainty"},
    "gradnorm": {"name": "gradnorm"},
    "dwa": {"name": "dwa"},
}
TERMS = ["focal", "dice", "iou"]


def synthetic_batch(image_size: int, images: int, masks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images; per image ``masks`` discs with one positive click inside each (ambiguous prompts)."""
    g = torch.Generator().manual_seed(seed)
    low = image_size // 4
    n = images * masks
    yy, xx = torch.meshgrid(torch.arange(low), torch.arange(low), indexing="ij")
    centres = torch.rand(n, 2, generator=g) * low * 0.6 + low * 0.2
    radii = torch.rand(n, generator=g) * low * 0.2 + low * 0.05
    dist = (xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2
    return {
        "images": torch.randint(0, 256, (images, 3, image_size, image_size), generator=g, dtype=torch.uint8),
        "valid": torch.ones(images, image_size, image_size, dtype=torch.bool),
        "image_index": torch.arange(images).repeat_interleave(masks),
        "points": (centres * 4).unsqueeze(1),  # input-frame pixels
        "labels": torch.ones(n, 1, dtype=torch.long),
        "target": (dist <= radii[:, None, None] ** 2).float(),
    }


class Trainer:
    """One model + optimiser + weighting strategy.

    ``step()`` returns ``(wall, cpu)`` seconds of one training step (``cpu``: process CPU time, all
    threads, which other processes on a shared machine barely disturb) and records the CPU time
    spent inside the strategy call in ``weighting_times``.
    """

    def __init__(self, model: torch.nn.Module, spec: dict, batch: dict[str, torch.Tensor]) -> None:
        self.model = copy.deepcopy(model)
        self.loss_fn = LOSSES.build({"name": "sam"})
        self.strategy = WEIGHTINGS.build(spec, terms=TERMS)
        self.strategy.bind(self.model)
        groups = [{"params": list(self.model.parameters())}, *self.strategy.param_groups(1e-4)]
        self.optimizer = torch.optim.AdamW(groups, lr=1e-4, weight_decay=0.1)
        self.batch = batch
        self.step_index = 0
        self.weighting_times: list[float] = []

    def step(self) -> tuple[float, float]:
        b = self.batch
        start, start_cpu = time.perf_counter(), time.process_time()
        embeddings = self.model.image_encoder(preprocess(self.model, b["images"], b["valid"]))
        logits, iou_pred = decode_masks(self.model, embeddings, b["image_index"], b["points"], b["labels"])
        out = self.loss_fn(logits, b["target"], iou_pred=iou_pred, candidates=output_candidates(b["labels"]))
        before = time.process_time()
        total, _ = self.strategy({t: out[t] for t in TERMS}, self.step_index)
        self.weighting_times.append(time.process_time() - before)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.strategy.step_end(True)
        self.step_index += 1
        return time.perf_counter() - start, time.process_time() - start_cpu


def run(args: argparse.Namespace) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[float]]]:
    torch.manual_seed(0)
    model = build_model("vit_tiny", image_size=args.image_size)
    batch = synthetic_batch(args.image_size, args.images, args.masks)
    trainers = {name: Trainer(model, spec, batch) for name, spec in STRATEGIES.items()}
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.step()
        trainer.weighting_times.clear()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no strategy always first
            times[name].extend(trainers[name].step() for _ in range(args.steps))
    return times, {name: trainer.weighting_times for name, trainer in trainers.items()}


def report(args: argparse.Namespace, times: dict[str, list[tuple[float, float]]],
           inside: dict[str, list[float]]) -> None:
    wall = {name: statistics.median(t[0] for t in v) for name, v in times.items()}
    cpu = {name: statistics.median(t[1] for t in v) for name, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    print(f"vit_tiny, image {args.image_size}, {args.images} images x {args.masks} masks "
          f"(single-click prompts, 3 candidate outputs), {args.rounds} rounds x {args.steps} steps, medians")
    print("| strategy | wall ms | wall vs fixed | CPU ms | CPU vs fixed | CPU ms in strategy | "
          "fixed step + in strategy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in times:
        own = statistics.median(inside[name])
        print(f"| {name} | {wall[name] * 1e3:.1f} | {wall[name] / wall['fixed']:.2f}x | {cpu[name] * 1e3:.1f} | "
              f"{cpu[name] / cpu['fixed']:.2f}x | {own * 1e3:.2f} | {(cpu['fixed'] + own) / cpu['fixed']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds x 3 steps (smoke run)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--masks", type=int, default=16, help="masks (prompts) per image")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per strategy per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: steady timings on a shared machine; 0 keeps torch's)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    report(args, *run(args))


if __name__ == "__main__":
    main()
