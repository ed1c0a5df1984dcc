"""Step time and peak memory of one training step per model of the registry, at its native input size.

Each model trains through the real ``Trainer.train_step`` (its own config: ``configs/mobile_sam_ft.yaml``
for ``vit_t``, ``configs/sam_hq_ft.yaml`` for HQ-SAM, ``configs/sam2_hiera_s_ft.yaml`` for SAM 2.1
(``--models sam2_1_hiera_t,...``; needs the sam2 package), ``configs/sam_ft.yaml`` for the ViT SAMs,
``configs/demo.yaml`` for ``vit_tiny``) on one synthetic image with ``--masks`` box prompts and no
correction rounds, in a fresh interpreter per model so that peak memory (resident set size above
the state after building the trainer and one warm-up step: activations, gradients, optimiser state
growth) does not mix between models. The baseline is ``vit_b`` in the same run (SAM's reference
model); ratios are against it. HQ-SAM trains only its additions (frozen ViT), so its step is
the frozen encoder's forward plus the decoder's forward and backward.

``--demo-miou`` answers another question: what the demo's validation mIoU is after the same number of
steps with ``vit_tiny`` and ``vit_t`` (MobileSAM). Each trains from scratch with ``configs/demo.yaml``'s
recipe (only ``model.name`` differs) at the same input size on the demo data (``tools/make_demo_data.py``'s
defaults: 18 train / 6 val images, 320 x 240), is validated once on the val split after the last step,
and the wall time of its run (training + that validation) is printed with the ratio to ``vit_tiny``'s.

usage: python benchmarks/bench_models.py [--quick] [--models vit_t,vit_b,...] [--threads 1]
       python benchmarks/bench_models.py --demo-miou [--steps 100] [--size 256] [--quick] [--threads 1]
  --quick: each model at a smaller input (vit_tiny 128, the others 256 where they allow it) and
  fewer repetitions; vit_b and hq_vit_b need their 1024 px and are replaced by vit_tiny / hq_vit_tiny.
  With --demo-miou: 128 px and 10 steps (unless --size / --steps say otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samft.archs import ARCHS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"vit_t": "mobile_sam_ft.yaml", "vit_tiny": "demo.yaml"}
FULL = ("vit_b", "vit_t", "hq_vit_b", "vit_tiny")
QUICK = ("vit_tiny", "vit_t", "hq_vit_tiny")


def config_of(name: str) -> str:
    by_decoder = {"hq": "sam_hq_ft.yaml", "sam2": "sam2_hiera_s_ft.yaml"}
    return CONFIGS.get(name, by_decoder.get(ARCHS[name].decoder, "sam_ft.yaml"))


def native_size(name: str, quick: bool) -> int:
    arch = ARCHS[name]
    if arch.fixed_image_size is not None:
        return arch.fixed_image_size
    return min(arch.native_image_size, 256) if quick else arch.native_image_size


def _rss_kib() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))


def _reset_peak() -> None:
    try:  # writing 5 to clear_refs resets VmHWM to the current RSS (Linux)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(name: str, size: int, masks: int, reps: int, threads: int) -> dict:
    """Time ``reps`` training steps of ``name`` (after one warm-up) and the peak RSS of one step."""
    from samft.config import load
    from samft.data.demo import make_demo_dataset
    from samft.engine.trainer import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_demo_dataset(tmp / "data", train_images=2, val_images=1, size=(size, size * 3 // 4), seed=0)
        cfg = load(REPO / "configs" / config_of(name), [
            f"data.train={tmp / 'data' / 'train'}", "data.val=null", "data.num_workers=0",
            f"data.max_masks={masks}", "data.batch_size=1", f"model.name={name}", f"model.image_size={size}",
            "prompts.mode=box", "prompts.correction_clicks=0", "prompts.extra_rounds=0",
            "schedule={name: constant, value: 1.0}", "train.steps=1000000", "train.progress=false",
            "tracking.enabled=false", f"train.output_dir={tmp / 'out'}", f"train.threads={threads}"])
        trainer = Trainer(cfg, project_root=tmp)
        batch = next(trainer._batches(trainer._loader(trainer.train_set, trainer.sampler)))
        trainer.train_step(batch)  # optimiser state exists from here on
        before = (_reset_peak(), _rss_kib())[1]
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            trainer.train_step(batch)
            times.append(time.perf_counter() - start)
        peak = _rss_kib() - before
        params = sum(p.numel() for p in trainer.model.parameters())
        trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"name": name, "size": size, "masks": int(batch.masks.shape[0]), "median_s": statistics.median(times),
            "min_s": min(times), "peak_mib": peak / 1024, "params": params, "trained": trained,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def demo_child(name: str, size: int, steps: int, threads: int, data: Path) -> dict:
    """Train ``name`` from scratch for ``steps`` with the demo recipe; its validation after the last step."""
    from samft.config import load
    from samft.engine.trainer import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load(REPO / "configs" / "demo.yaml", [
            f"data.train={data / 'train'}", f"data.val={data / 'val'}", f"model.name={name}",
            f"model.image_size={size}", f"train.steps={steps}", f"train.val_every={steps}",
            f"train.checkpoint_every={steps}", "train.progress=false", "tracking.enabled=false",
            f"train.output_dir={Path(tmp) / 'out'}", f"train.threads={threads}"])
        start = time.perf_counter()
        result = Trainer(cfg, project_root=Path(tmp)).fit()
        wall = time.perf_counter() - start
    val = result.val_metrics
    return {"name": name, "size": size, "steps": result.steps, "miou_point": val["val/miou_point"],
            "miou_box": val["val/miou_box"], "masks": val["val/num_masks"], "wall_s": wall}


def demo_miou(args) -> None:
    from samft.data.demo import make_demo_dataset

    size, steps = args.size or (128 if args.quick else 256), args.steps or (10 if args.quick else 100)
    print(f"demo validation mIoU after {steps} steps from scratch at {size} px: configs/demo.yaml's recipe, "
          f"{args.threads} thread(s) (pinned), demo data (18 train / 6 val images, 320x240)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo_dataset(Path(tmp) / "demo", seed=0)
        rows = []
        for name in ("vit_tiny", "vit_t"):
            cmd = [sys.executable, __file__, "--child-demo", name, "--size", str(size), "--steps", str(steps),
                   "--threads", str(args.threads), "--data", str(data)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=REPO)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            if len(rows) == 1:
                print("| model | input | steps | val mIoU point | val mIoU box | val masks | wall s (train + val) "
                      "| vs vit_tiny |")
                print("|---|---:|---:|---:|---:|---:|---:|---:|")
            r = rows[-1]
            print(f"| {r['name']} | {r['size']} | {r['steps']} | {r['miou_point']:.4f} | {r['miou_box']:.4f} | "
                  f"{r['masks']:.0f} | {r['wall_s']:.1f} | {r['wall_s'] / rows[0]['wall_s']:.2f}x |", flush=True)


def run(name: str, args) -> dict:
    size = native_size(name, args.quick)
    cmd = [sys.executable, __file__, "--child", name, "--size", str(size), "--masks", str(args.masks),
           "--reps", str(args.reps), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="", help="comma-separated names (default: " + ",".join(FULL) + ")")
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--reps", type=int, default=0, help="timed steps per model (default 3, quick 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--demo-miou", action="store_true",
                        help="the demo's validation mIoU of vit_tiny and vit_t after the same steps")
    parser.add_argument("--steps", type=int, default=0, help="with --demo-miou: training steps (default 100, quick 10)")
    parser.add_argument("--size", type=int, default=0, help="with --demo-miou: input side (default 256, quick 128)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-demo", default="", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.reps = args.reps or (2 if args.quick else 3)
    if args.child:
        print(json.dumps(child(args.child, args.size, args.masks, args.reps, args.threads)))
        return
    if args.child_demo:
        print(json.dumps(demo_child(args.child_demo, args.size, args.steps, args.threads, args.data)))
        return
    if args.demo_miou:
        demo_miou(args)
        return
    names = [n for n in args.models.split(",") if n] or list(QUICK if args.quick else FULL)
    print(f"one training step per model: {args.threads} thread(s) (pinned), {args.masks} box-prompted masks, "
          f"1 image, no correction rounds, {args.reps} timed steps after 1 warm-up (median)", flush=True)
    base = None
    for name in names:  # one row as soon as each model is measured (a full run takes long on a busy CPU)
        r = run(name, args)
        if base is None:
            base = r
            print(f"| model | input | parameters | trained | step s (median) | vs {base['name']} | "
                  f"peak MiB of a step | vs {base['name']} |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {r['name']} | {r['size']} | {r['params'] / 1e6:.2f}M | {r['trained'] / 1e6:.2f}M | "
              f"{r['median_s']:.3f} | {r['median_s'] / base['median_s']:.2f}x | {r['peak_mib']:.0f} | "
              f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
