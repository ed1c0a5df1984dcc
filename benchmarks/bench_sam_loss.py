"""Speed and peak memory of the ``sam`` objective against a straightforward implementation.

Both variants compute the same SAM objective (focal 20 : dice 1 with min-loss selection over
the outputs, MSE IoU loss on all outputs, SAM 2 normalisation) on ``[N, M, H, W]`` logits,
forward + backward. The baseline is what a user writes with torch ops: separate sigmoid, BCE,
focal, dice and IoU passes over the full tensor, selection by indexing. The values and the
gradients of both are asserted equal before anything is timed.

Time: the minimum (and median) over interleaved repetitions, next to the time of one read of
the logits (``logits.sum()``), the memory-bandwidth floor. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` above the inputs; on CPU each variant runs in a fresh
subprocess that allocates the inputs (after warming up on a tiny batch), resets the Linux
resident-set high-water mark (``/proc/self/clear_refs``) and reports the high-water mark after
one forward + backward minus the resident set before it (the ``ru_maxrss`` delta where the
reset is not permitted).

    python benchmarks/bench_sam_loss.py            # 64 masks x 3 outputs x 256 x 256
    python benchmarks/bench_sam_loss.py --quick    # 16 masks x 3 x 128 x 128
    python benchmarks/bench_sam_loss.py --threads 1  # one intra-op thread (steadier on a busy machine)
    python benchmarks/bench_sam_loss.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from samft.losses.sam import sam


def baseline_sam(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """The SAM objective as usually written: one full-size pass per formula."""
    t = target[:, None].expand_as(logits).float()
    x = logits.float()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = (0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2
    focal = focal.flatten(2).mean(-1)
    inter = (p * t).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    pred, gt = x > 0, t > 0
    actual = (pred & gt).flatten(2).sum(-1) / (pred | gt).flatten(2).sum(-1).clamp(min=1)
    iou = F.mse_loss(iou_pred.float(), actual.float(), reduction="none").mean(1)
    selected = (20 * focal + dice).detach().argmin(1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    present = target.flatten(1).sum(1) > 0
    n = logits.shape[0]
    terms = [(v * present).sum() / n for v in (focal[rows, selected], dice[rows, selected], iou)]
    return {"loss": 20 * terms[0] + terms[1] + terms[2], "selected": selected}


def fused_sam(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor) -> dict[str, torch.Tensor]:
    return sam(logits, target, iou_pred=iou_pred)


VARIANTS = {"baseline": baseline_sam, "samft": fused_sam}


def make_inputs(masks: int, outputs: int, size: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(masks, outputs, size, size, generator=gen) * 3).to(device).requires_grad_()
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(masks, 2, generator=gen) * size
    radii = torch.rand(masks, generator=gen) * size / 3 + 4
    dist = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    target = (dist < radii[:, None, None] ** 2).float().to(device)
    iou_pred = torch.rand(masks, outputs, generator=gen).to(device).requires_grad_()
    return logits, target, iou_pred


def step(fn, logits, target, iou_pred) -> torch.Tensor:
    out = fn(logits, target, iou_pred)
    out["loss"].backward()
    return out["loss"].detach()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_equal(args) -> None:
    """Assert both variants give the same loss, selection and gradients (fp32 tolerances)."""
    results = {}
    for name, fn in VARIANTS.items():
        logits, target, iou_pred = make_inputs(args.masks, args.outputs, args.size, args.device)
        out = fn(logits, target, iou_pred)
        out["loss"].backward()
        results[name] = (out["loss"].detach(), out["selected"], logits.grad, iou_pred.grad)
    (loss_a, sel_a, grad_a, iou_a), (loss_b, sel_b, grad_b, iou_b) = results.values()
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert torch.equal(sel_a, sel_b), "selected outputs differ"
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(iou_a, iou_b, rtol=1e-5, atol=1e-9)
    print(f"values equal: loss {loss_a.item():.6f} vs {loss_b.item():.6f}, "
          f"max |grad diff| {(grad_a - grad_b).abs().max().item():.2e} (max |grad| {grad_a.abs().max().item():.2e})")


def time_variants(args) -> dict[str, list[float]]:
    logits, target, iou_pred = make_inputs(args.masks, args.outputs, args.size, args.device)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    times["forward:baseline"], times["forward:samft"], times["read"] = [], [], []
    for _ in range(args.warmup):
        for fn in VARIANTS.values():
            step(fn, logits, target, iou_pred)
    # Interleaved so that load from other processes hits both variants alike.
    for _ in range(args.reps):
        for name, fn in VARIANTS.items():
            logits.grad = iou_pred.grad = None
            sync(args.device)
            start = time.perf_counter()
            step(fn, logits, target, iou_pred)
            sync(args.device)
            times[name].append(time.perf_counter() - start)
            with torch.no_grad():
                start = time.perf_counter()
                fn(logits, target, iou_pred)
                sync(args.device)
                times["forward:" + name].append(time.perf_counter() - start)
        start = time.perf_counter()
        logits.detach().sum()
        sync(args.device)
        times["read"].append(time.perf_counter() - start)
    return times


def peak_memory_child(name: str, args) -> int:
    """Bytes of peak memory above the inputs for one forward + backward of ``name``."""
    fn = VARIANTS[name]
    step(fn, *make_inputs(2, args.outputs, 32, args.device))  # load kernels, spin up threads
    logits, target, iou_pred = make_inputs(args.masks, args.outputs, args.size, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, logits, target, iou_pred)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _reset_cpu_peak()
    step(fn, logits, target, iou_pred)
    return _cpu_peak() - before


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} missing from /proc/self/status")


def _reset_cpu_peak() -> int:
    """Reset the resident-set high-water mark (Linux ``clear_refs``); return the current RSS in bytes.

    Without the reset, ``ru_maxrss`` still holds transient peaks of ``import torch`` and hides
    smaller peaks; if the reset is not permitted, fall back to the ``ru_maxrss`` delta.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_peak() -> int:
    try:
        return _status_kib("VmHWM") * 1024
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_memory(name: str, args) -> int:
    """Run ``peak_memory_child`` in a fresh interpreter so that peaks do not mix."""
    cmd = [sys.executable, __file__, "--child", name, "--masks", str(args.masks), "--outputs", str(args.outputs),
           "--size", str(args.size), "--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def report(args, times: dict[str, list[float]], memory: dict[str, int]) -> None:
    base, base_mem = min(times["baseline"]), memory["baseline"]
    print(f"\nsam objective, {args.masks} masks x {args.outputs} outputs x {args.size} x {args.size}, "
          f"device {args.device}, {torch.get_num_threads()} threads, {args.reps} reps (min / median)")
    print("| variant | fwd+bwd min ms | median ms | vs baseline | fwd only ms | peak extra MiB | vs baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in VARIANTS:
        best = min(times[name])
        print(f"| {name} | {best * 1e3:.1f} | {statistics.median(times[name]) * 1e3:.1f} | {best / base:.3f}x | "
              f"{min(times['forward:' + name]) * 1e3:.1f} | {memory[name] / 2**20:.1f} | "
              f"{memory[name] / base_mem:.3f}x |")
    read = min(times["read"])
    print(f"| read floor (logits.sum()) | {read * 1e3:.2f} | {statistics.median(times['read']) * 1e3:.2f} | "
          f"{read / base:.4f}x | | | |")
    fused = min(times["samft"])
    print(f"\nspeed-up {base / fused:.2f}x (target >= 2x), memory {memory['samft'] / base_mem:.3f} of the baseline "
          f"(target <= 0.5), samft fwd+bwd = {fused / read:.0f} reads of the logits")
    if hasattr(os, "getloadavg"):
        print(f"load average during the run: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="16 masks x 128 x 128, fewer repetitions")
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--outputs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.masks, args.size, args.reps, args.warmup = 16, 128, 5, 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA build of torch and a GPU")
    if args.child:
        print(json.dumps({"peak_bytes": peak_memory_child(args.child, args)}))
        return
    check_equal(args)
    memory = {name: peak_memory(name, args) for name in VARIANTS}
    report(args, time_variants(args), memory)


if __name__ == "__main__":
    main()
