"""``tools/plan_memory.py CONFIG [key=value ...] --budget 24GB``: the estimated peak memory of one training
step and the cheapest settings that fit the budget (:mod:`samft.engine.memory_plan`).

Arguments and the budget are read before torch is imported, so ``--help`` and a bad budget answer at once.
"""

from __future__ import annotations

import argparse
import re
import sys

from samft.cli import run_cli

UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
         "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_budget(text: str) -> int:
    """Bytes of a size such as ``24GB``, ``16 GiB``, ``8000MB`` or ``1.5T``.

    GB and GiB both mean 2**30 bytes, as GPU makers count memory (a "24 GB" card has 24 GiB).

    Raises:
        ValueError: text that is not a positive size, with what to write instead.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match[2].lower() if match else None
    if not match or unit not in UNITS or float(match[1]) <= 0:
        raise ValueError(f"--budget {text!r}: use a memory size such as 24GB, 16GiB or 8000MB "
                         "(the GPU memory to fit one training step in).")
    return int(float(match[1]) * UNITS[unit])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/plan_memory.py", description=(
        "Estimate the peak memory of one training step of CONFIG (parameters, gradients, optimiser state, "
        "activations, attention) and list the cheapest settings that fit --budget: the lean attention, "
        "bf16, activation checkpointing of the encoder and of the decoder, PEFT (model.peft), fewer masks per "
        "image, smaller batches. The model is built from the config on the meta device: nothing is "
        "allocated and no checkpoint is read."))
    p.add_argument("config", help="a training config, e.g. configs/sam_ft.yaml")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, as for tools/train.py")
    p.add_argument("--budget", required=True, help="memory to fit, e.g. 24GB (GB = GiB = 2**30 bytes)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="where training runs (precision auto: bf16 on cuda, fp32 on cpu); default cuda")
    p.add_argument("--top", type=int, default=5, help="how many fitting settings to list (default 5)")
    return p


def _plan(argv: list[str]) -> int:
    args = parser().parse_intermixed_args(argv)  # -h and usage errors end here, before torch loads
    from samft.config import ConfigError

    try:
        budget = parse_budget(args.budget)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    from samft.engine.memory_plan import describe, plan

    result = plan(args.config, args.overrides, budget, args.device, args.top)
    print(describe(result, budget, args.device, args.top))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_plan, sys.argv[1:] if argv is None else argv)
