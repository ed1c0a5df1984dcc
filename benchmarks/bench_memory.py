"""Peak memory and time of one training step: segment_anything's attention (baseline) vs the lean attention,
activation checkpointing (encoder blocks; encoder blocks and decoder rounds), LoRA and LoRA + lean attention +
both checkpointings, each measured in the same run; and the memory planner's estimate of each against the
measured peak.

One step = ``Trainer.train_step``: image encoder, the interactive rounds (prompt encoder + mask decoder per
round), SAM's loss, backward, AdamW. Default: ViT-B at 1024 px, 1 image, 16 masks, 2 rounds (1 correction
click; SAM's 11 rounds keep ~1.6 GiB of decoder activations per round at 16 masks: pass ``--rounds 11`` on a
machine with ~30 GB free). Peak memory: glibc's in-use bytes read after every aten op on a CPU,
``torch.cuda.max_memory_allocated`` on CUDA (``samft.engine.memory``), weights and optimiser state included.
Time: the step after the measured one (wall and CPU seconds; CPU time is less sensitive to other jobs).
Rows whose config is refused (``model.peft`` before a PEFT method exists) are skipped with a note. The run
stops before measuring when the planner expects the baseline not to fit in the memory available now (ViT-B's
baseline needs ~10.5 GiB at 16 masks; on a machine shared with other jobs use ``--model vit_tiny``, whose global
attention at 1024 px is as long, 4096 tokens, with 2 heads).

    python benchmarks/bench_memory.py [--quick] [--model vit_b] [--size 1024] [--masks 16] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samft.config import ConfigError, load  # noqa: E402
from samft.data.demo import make_demo_dataset  # noqa: E402
from samft.engine.memory import allocated_bytes, step_peak, with_masks  # noqa: E402
from samft.engine.memory_plan import estimate, gib  # noqa: E402
from samft.engine.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEAN_CHECKPOINTED = ["model.attention=sdpa", "model.activation_checkpointing=true", "model.decoder_checkpointing=true"]
ROWS = {
    "full fine-tuning, segment_anything's attention (baseline)": ["model.attention=eager"],
    "full fine-tuning, lean attention": ["model.attention=sdpa"],
    "full fine-tuning, lean attention + encoder checkpointing": ["model.attention=sdpa",
                                                                 "model.activation_checkpointing=true"],
    "full fine-tuning, lean attention + encoder and decoder checkpointing": LEAN_CHECKPOINTED,
    "LoRA, segment_anything's attention": ["model.attention=eager", "model.peft={name: lora}"],
    "LoRA + lean attention + encoder and decoder checkpointing": [*LEAN_CHECKPOINTED, "model.peft={name: lora}"],
}


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def measure(cfg, root: Path, masks: int) -> tuple[int, float, float]:
    """(peak bytes, wall s, CPU s) of one steady-state step."""
    gc.collect()
    base = allocated_bytes("cpu")
    trainer = Trainer(cfg, project_root=root)
    batch = with_masks(next(trainer._batches(trainer._loader(trainer.train_set, trainer.sampler))), masks)
    peak = step_peak(trainer.train_step, batch, "cpu", base)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train_step(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del trainer, batch
    gc.collect()
    return peak, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="vit_tiny at 512 px, 8 masks (for make bench)")
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--size", type=int, default=1024, help="input side (vit_b, vit_l, vit_h: 1024 only)")
    parser.add_argument("--masks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="interactive rounds (SAM: 11)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, size, masks = ("vit_tiny", 512, 8) if args.quick else (args.model, args.size, args.masks)
    print(f"memory benchmark: {model}, {size} px, 1 image x {masks} masks, {args.rounds} rounds, fp32, "
          f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s), torch "
          f"{torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_demo_dataset(tmp / "data", train_images=2, val_images=1, size=(320, 240), seed=0)
        common = [f"data.train={tmp / 'data' / 'train'}", "data.val=null", "data.num_workers=0",
                  "tracking.enabled=false", "train.progress=false", f"train.output_dir={tmp / 'out'}",
                  "train.steps=1000", "schedule={name: constant, value: 1.0}", "train.device=cpu",
                  "train.precision=fp32", f"model.name={model}", f"model.image_size={size}",
                  f"data.max_masks={masks}", "data.batch_size=1", f"prompts.correction_clicks={args.rounds - 1}",
                  "prompts.extra_rounds=0", "optim.layer_decay=1.0"]
        # The first Trainer of a process also allocates what stays for good (lazy imports, kernel tables):
        # a throw-away step first, so that the baseline row does not carry it.
        warm_up = [*common, "model.name=vit_tiny", "model.image_size=128", "data.max_masks=2"]  # later keys win
        measure(load(REPO / "configs" / "sam_ft.yaml", warm_up), tmp, 2)
        configs = {}
        for name, overrides in ROWS.items():
            try:
                configs[name] = load(REPO / "configs" / "sam_ft.yaml", [*common, *overrides])
            except ConfigError as exc:
                print(f"skipped '{name}': the config does not accept it yet ({exc})")
        needed = max(estimate(cfg, "cpu").peak for cfg in configs.values())
        if needed > 0.9 * available_bytes():
            sys.exit(f"error: the planner expects up to {gib(needed)} per step, more than 90% of the "
                     f"{gib(available_bytes())} available now; use a smaller --model or --masks, or wait.")
        for name, cfg in configs.items():
            predicted = estimate(cfg, "cpu")
            torch.manual_seed(0)
            peak, wall, cpu = measure(cfg, tmp, masks)
            rows.append((name, peak, wall, cpu, predicted.peak, predicted.trainable))
            print(f"  measured '{name}': {gib(peak)}, {wall:.1f} s", flush=True)
    if not rows:
        return
    _, base_peak, base_wall, base_cpu, _, _ = rows[0]
    print("\n| step | trainable | peak memory | vs baseline | wall s | vs baseline | CPU s | vs baseline | "
          "planner estimate | estimate / measured |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, peak, wall, cpu, predicted, trainable in rows:
        print(f"| {name} | {trainable / 1e6:.2f}M | {gib(peak)} | {peak / base_peak:.2f}x | {wall:.1f} | "
              f"{wall / base_wall:.2f}x | {cpu:.1f} | {cpu / base_cpu:.2f}x | {gib(predicted)} | "
              f"{predicted / peak:.2f} |")


if __name__ == "__main__":
    main()
