"""Checkpoint sizes and trainable parameters of the PEFT methods against full fine-tuning, same model, same run.

A random ViT-B (no weights can be downloaded; sizes do not depend on the values) is adapted by each
method as ``model_from_config`` does, and its checkpoints are written as the trainer writes them:
``best.pt`` = the trained tensors (+ the base's identity for PEFT), ``last.pt`` = that + AdamW's
state (two moments per trained tensor) after one step. ``merged`` is what ``tools/export.py --format
sam`` writes after folding the method into the base weights, with the time the fold took.

    python benchmarks/bench_peft.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from samft.engine.build import peft_checkpoint_fields
from samft.models import apply_peft, build_model, freeze, merge_peft, parameter_counts
from samft.models.peft import base_identity

# (label, model.peft, model.freeze_* flags: image encoder, prompt encoder, mask decoder)
RUNS = [
    ("full fine-tuning (baseline)", None, (False, False, False)),
    ("lora q,v r4 + decoder (configs/sam_ft_lora.yaml)", {"name": "lora", "rank": 4}, (False, True, False)),
    ("lora q,v r4 only", {"name": "lora", "rank": 4}, (False, True, True)),
    ("lora qkv,proj,mlp r8 only", {"name": "lora", "rank": 8, "targets": ["qkv", "proj", "mlp"]}, (False, True, True)),
    ("lora decoder r4 only (frozen encoder)", {"name": "lora", "targets": ["decoder"]}, (True, True, False)),
    ("adaptformer 64 only", {"name": "adaptformer"}, (False, True, True)),
    ("ssf only", {"name": "ssf"}, (False, True, True)),
    ("bias only", {"name": "bias"}, (False, True, True)),
    ("norm only", {"name": "norm"}, (False, True, True)),
    ("attention only", {"name": "attention"}, (False, True, True)),
]


def sizes(model: torch.nn.Module, spec: dict | None, folder: Path) -> tuple[int, int]:
    """Bytes of best.pt and last.pt as the trainer writes them."""
    fields = {"model": model.state_dict()} if spec is None else peft_checkpoint_fields(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.save(fields, folder / "best.pt")
    torch.save({**fields, "optimizer": optimizer.state_dict()}, folder / "last.pt")
    return (folder / "best.pt").stat().st_size, (folder / "last.pt").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="vit_tiny at 64 px instead of ViT-B")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name, size = ("vit_tiny", 64) if args.quick else ("vit_b", 1024)
    print(f"model {name} ({size} px), random weights; torch threads: {torch.get_num_threads()}")
    print(f"{'method':50s} {'trainable':>12s} {'share':>7s} {'best.pt':>10s} {'last.pt':>10s} {'vs full':>8s} "
          f"{'merged':>10s} {'merge s':>8s}")
    baseline = None
    for label, spec, (encoder, prompt, decoder) in RUNS:
        torch.manual_seed(0)
        model = build_model(name, size)
        freeze(model, image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder, adapters=spec is not None)
        if spec is not None:
            identity = base_identity(model, None, 0)
            apply_peft(model, spec)
            model.samft_base = identity
        trainable, total = parameter_counts(model)
        with tempfile.TemporaryDirectory() as tmp:
            best, last = sizes(model, spec, Path(tmp))
            merged, seconds = "-", "-"
            if spec is None or model.samft_peft.foldable:
                started = time.perf_counter()
                merge_peft(model)
                seconds = f"{time.perf_counter() - started:.2f}"
                torch.save(model.state_dict(), Path(tmp) / "merged.pth")
                merged = f"{(Path(tmp) / 'merged.pth').stat().st_size / 2**20:.1f} MiB"
        baseline = baseline or last
        print(f"{label:50s} {trainable:>12,d} {100 * trainable / total:>6.2f}% {best / 2**20:>6.1f} MiB "
              f"{last / 2**20:>6.1f} MiB {last / baseline:>7.3f}x {merged:>10s} {seconds:>8s}")


if __name__ == "__main__":
    main()
