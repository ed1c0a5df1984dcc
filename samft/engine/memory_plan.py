"""Estimate the peak memory of one training step from a config, and find the cheapest settings that fit.

The model is built from the config exactly as training builds it (``model_from_config``: architecture,
attention, PEFT when the config has it; then the configured freezing), but on the ``meta`` device: no
weights are allocated and no checkpoint is read, yet parameter counts and which of them train follow
whatever the config builds. One image-encoder forward and one mask-decoder round then run on meta
tensors under ``saved_tensors_hooks``, which count every tensor autograd keeps for backward (each
storage once). From these:

* parameters: every weight and buffer (fp32); gradients: 4 bytes per trainable weight; optimiser
  state: AdamW's two moments, 8 bytes per trainable weight;
* activations: what the encoder saves outside its attention, ``rounds`` x the decoder's saved tensors
  for all masks (with decoder checkpointing only each round's fed-back mask prompt, the checkpoint's
  input), each round's kept outputs and loss inputs, and the batch itself;
* attention: what the encoder's attention modules save (segment_anything's eager attention keeps a
  ``[heads, N, N]`` matrix per block; the lean ``sdpa`` attention keeps only its queries, keys, values
  and output, counted as the fused kernel every supported device uses);
* transient: the largest temporaries of backward (two attention-sized buffers of one block, the
  recomputed block with activation checkpointing, the loss's gradients, one round's recomputed decoder
  activations with decoder checkpointing) and, with bf16/fp16 autocast, the half-precision copies of
  the weights.

The step's peak is ``parameters + optimiser + max(activations + attention + transient, 2 x gradients)``:
the start of backward (every activation alive) or the optimiser step (gradients and AdamW's
temporaries). Checked against measured peaks of real steps in ``tests/engine/test_memory_plan.py``
and ``benchmarks/bench_memory.py``.

Assumptions: every image carries ``data.max_masks`` masks (the worst case); ``precision: auto``
counts as bf16 on CUDA (what it picks on GPUs from Ampere on) and fp32 on a CPU; under autocast,
activations are counted in half precision except the fp32 softmax of the eager attention. Not
counted: the kernel libraries' per-process scratch (the CPU matmul kernels' and the CPU flash
attention's on a CPU, cuBLAS workspaces on CUDA), allocated at the first op of a size and kept for the
process's life: ~22 MiB on a CPU at 1 thread, whatever the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from omegaconf import DictConfig, OmegaConf
from segment_anything.modeling.image_encoder import Attention

from samft.archs import ARCHS
from samft.config import ConfigError, load, shown
from samft.engine.build import model_from_config
from samft.models import decode_masks, spec_of
from samft.models.tiny_vit import Attention as WindowAttention

# The attention modules whose saved tensors count as "attention": segment_anything's (ViT, HQ-SAM's
# encoder) and TinyViT's windowed attention (MobileSAM).
ATTENTION_MODULES = (Attention, WindowAttention)
MODELLED_ENCODERS = ("vit", "tiny_vit")

GiB = 2**30
OUTSIDE = -1  # saved outside the encoder's blocks
HALF = ("bf16", "fp16")


@dataclass(frozen=True)
class Estimate:
    """Bytes of one training step's memory by kind, and the step's estimated peak.

    Backward runs through the decoder rounds first, freeing their activations, then through the
    encoder, whose attention gradients need a workspace. So the peak is the largest of three moments
    on top of the weights and the optimiser state: the start of backward (all activations, the loss's
    gradients and, with decoder checkpointing, one round's recomputed decoder activations), the
    encoder's backward (its activations and the workspace) and the optimiser step (gradients and
    AdamW's temporaries, as large again).
    """

    parameters: int  # every weight and buffer (fp32)
    gradients: int  # one fp32 gradient per trainable weight
    optimizer: int  # AdamW's two moments
    encoder: int  # the image encoder's saved activations outside its attention
    decoder: int  # every round's decoder activations, kept outputs and loss inputs, and the batch
    attention: int  # saved inside the encoder's attention modules
    loss_transient: int  # the loss's gradients at the start of backward
    recompute: int  # with decoder checkpointing: one round's decoder activations, recomputed in backward
    workspace: int  # the encoder's backward: one block's attention gradients (+ the recomputed block)
    weight_copies: int  # half-precision copies of the weights under bf16/fp16 autocast
    trainable: int  # trainable weights (count)
    total: int  # all weights (count)

    @property
    def activations(self) -> int:
        return self.encoder + self.decoder

    @property
    def moments(self) -> dict[str, int]:
        """Bytes on top of the weights and optimiser state at each candidate moment of the peak."""
        return {"start of backward": self.activations + self.attention + self.loss_transient + self.recompute,
                "encoder backward": self.encoder + self.attention + self.workspace,
                "optimiser step": 2 * self.gradients}

    @property
    def transient(self) -> int:
        """The temporaries at the peak's moment (what the breakdown's other rows do not hold)."""
        moment = max(self.moments, key=self.moments.get)
        return {"start of backward": self.loss_transient + self.recompute,
                "encoder backward": self.workspace - self.decoder,
                "optimiser step": 2 * self.gradients - self.activations - self.attention}[moment] + self.weight_copies

    @property
    def peak(self) -> int:
        return self.parameters + self.optimizer + self.weight_copies + max(self.moments.values())

    def rows(self) -> list[tuple[str, int]]:
        return [("parameters", self.parameters), ("gradients", self.gradients), ("optimizer state", self.optimizer),
                ("activations", self.activations), ("attention", self.attention)]


@dataclass(frozen=True)
class _Profile:
    """What one meta run of the encoder (per image) and the decoder (per mask and round) keeps."""

    encoder_other: int  # saved outside the blocks (patch embedding, neck)
    blocks: tuple[int, ...]  # saved per block outside its attention
    attention: tuple[int, ...]  # saved per block inside its attention
    block_inputs: tuple[int, ...]  # each block's input (what activation checkpointing keeps per block)
    channels: int  # of the image embedding the decoder reads (HQ-SAM: SAM's + its early ViT feature)
    decoder_first: int  # round 0, per mask
    decoder_later: int  # rounds with a fed-back mask prompt, per mask
    params: int
    trainable: int
    buffers: int


def estimate(cfg: DictConfig, device: str = "cuda") -> Estimate:
    """The estimated memory of one training step of ``cfg`` on a ``device`` (``cuda`` or ``cpu``)."""
    _check_modelled(cfg.model.name)
    return _combine(cfg, _profile(cfg, device), device)


def _check_modelled(name: str) -> None:
    """The estimate walks the encoder blocks of the model's entry and counts the attention modules it
    knows (segment_anything's ViT and HQ-SAM's, MobileSAM's TinyViT); other encoders (plugins) are
    refused in one line rather than misestimated."""
    arch = ARCHS.get(name)
    if arch is None or arch.encoder not in MODELLED_ENCODERS:
        raise ConfigError(f"model.name={name}: the memory planner models the built-in models' encoders (vit_b, "
                          "vit_l, vit_h, vit_tiny, vit_t, hq_*); for this model measure one step with "
                          "benchmarks/bench_models.py instead.")


def _precision(cfg: DictConfig, device: str) -> str:
    p = cfg.train.precision
    return ("bf16" if device == "cuda" else "fp32") if p == "auto" else p


def _meta_model(cfg: DictConfig) -> torch.nn.Module:
    plain = OmegaConf.merge(cfg, {"model": {"checkpoint": None}})  # the weights' values do not matter here
    with torch.device("meta"):
        return model_from_config(plain, Path("."))  # frozen parts and PEFT applied as in training


@contextlib.contextmanager
def _fused_attention_on_meta() -> Iterator[None]:
    """On meta tensors SDPA takes its math fallback (which stores ``[N, N]``); every device the lean
    attention targets runs a fused kernel instead, whose saved tensors (q, k, v, output, logsumexp)
    the CPU flash kernel's meta implementation reproduces."""
    def fused(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)[0]

    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", fused):
        yield


class _SavedBytes:
    """Counts the storages autograd saves, each once, attributed to the encoder block and attention running.

    ``half``: count as bf16/fp16 autocast keeps them. The meta run is in fp32 (meta tensors ignore
    autocast); autocast keeps activations in half precision (half the bytes), except the eager
    attention's softmax, which CUDA's autocast runs in fp32 and whose half copy feeds ``@ v`` (1.5 x the
    fp32 bytes; CPU autocast keeps it in half precision).
    """

    def __init__(self, model: torch.nn.Module, half: bool = False, fp32_softmax: bool = True) -> None:
        self.skip = {p.untyped_storage()._cdata for p in model.parameters()}
        self.half = half
        self.matrix_factor = 1.5 if fp32_softmax else 0.5
        self.seen: dict[int, tuple[float, int, bool]] = {}
        self.block = OUTSIDE
        self.in_attention = False
        self.keep: list[torch.Tensor] = []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in self.skip and storage._cdata not in self.seen:
            size = float(storage.nbytes())
            if self.half:
                matrix = self.in_attention and t.dim() >= 2 and t.shape[-1] == t.shape[-2] > 64
                size *= self.matrix_factor if matrix else 0.5
            self.seen[storage._cdata] = (size, self.block, self.in_attention)
            self.keep.append(t)  # keeps the storage alive, so its address stays unique
        return t

    def total(self, block: int | None = None, attention: bool | None = None) -> int:
        """Bytes saved in ``block`` (None: anywhere; OUTSIDE: outside the blocks), inside or outside attention."""
        return int(sum(s for s, b, a in self.seen.values() if (block is None or b == block)
                       and (attention is None or a == attention)))


def _encoder_profile(model: torch.nn.Module, images: int, size: int, half: bool, device: str) -> dict:
    encoder = model.image_encoder
    counter = _SavedBytes(model, half, fp32_softmax=device == "cuda")
    blocks = spec_of(model).encoder_blocks(model)
    inputs = [0] * len(blocks)

    def enter(i: int, x: torch.Tensor) -> None:
        counter.block = i
        inputs[i] = x.numel() * (2 if half else 4)

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(lambda _m, args, i=i: enter(i, args[0])))
        handles.append(block.register_forward_hook(lambda *_: setattr(counter, "block", OUTSIDE)))
    for module in encoder.modules():
        if isinstance(module, ATTENTION_MODULES):
            handles.append(module.register_forward_pre_hook(lambda *_: setattr(counter, "in_attention", True)))
            handles.append(module.register_forward_hook(lambda *_: setattr(counter, "in_attention", False)))
    x = torch.empty(images, 3, size, size, device="meta")
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), _fused_attention_on_meta():
            out = encoder(x)
    finally:
        for h in handles:
            h.remove()
    depth = len(blocks)
    return {
        "encoder_other": counter.total(block=OUTSIDE),
        "blocks": tuple(counter.total(block=i, attention=False) for i in range(depth)),
        "attention": tuple(counter.total(block=i, attention=True) for i in range(depth)),
        "block_inputs": tuple(inputs),
        "channels": out.shape[1],
        "embedding_grad": out.requires_grad,
    }


def _embedding_channels(model: torch.nn.Module, size: int) -> int:
    with torch.no_grad():
        return model.image_encoder(torch.empty(1, 3, size, size, device="meta")).shape[1]


def _decoder_saved(model: torch.nn.Module, masks: int, size: int, half: bool, embedding_grad: bool,
                   with_mask: bool, channels: int) -> int:
    side = size // 16
    emb = torch.empty(1, channels, side, side, device="meta", requires_grad=embedding_grad)
    index = torch.zeros(masks, dtype=torch.long, device="meta")
    points = torch.empty(masks, 2, 2, device="meta")
    labels = torch.ones(masks, 2, dtype=torch.long, device="meta")
    mask_in = torch.empty(masks, 1, 4 * side, 4 * side, device="meta") if with_mask else None
    counter = _SavedBytes(model, half)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        decode_masks(model, emb, index, points, labels, mask_in)
    return counter.total()


_PROFILES: dict[tuple, _Profile] = {}


def _profile(cfg: DictConfig, device: str) -> _Profile:
    precision = _precision(cfg, device)
    m = cfg.model
    key = (device, m.name, m.image_size, m.attention, str(m.get("peft")), m.freeze_image_encoder,
           m.freeze_prompt_encoder, m.freeze_mask_decoder, bool(m.embedding_cache), precision)
    if key in _PROFILES:
        return _PROFILES[key]
    model = _meta_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    half = precision in HALF
    size = m.image_size
    if m.embedding_cache:  # embeddings come from the cache: the encoder does not run
        enc = {"encoder_other": 0, "blocks": (), "attention": (), "block_inputs": (),
               "channels": _embedding_channels(model, size), "embedding_grad": False}
    else:
        enc = _encoder_profile(model, 1, size, half, device)
    per_mask = [_decoder_saved(model, 4, size, half, enc["embedding_grad"], w, enc["channels"]) / 4
                for w in (False, True)]
    profile = _Profile(enc["encoder_other"], enc["blocks"], enc["attention"], enc["block_inputs"], enc["channels"],
                       int(per_mask[0]), int(per_mask[1]), params, trainable, buffers)
    _PROFILES[key] = profile
    return profile


def _combine(cfg: DictConfig, p: _Profile, device: str) -> Estimate:
    images, size = cfg.data.batch_size, cfg.model.image_size
    masks = images * cfg.data.max_masks
    pr = cfg.prompts
    rounds = 1 + pr.correction_clicks + pr.extra_rounds
    later = p.decoder_later if pr.feed_back_mask else p.decoder_first
    res = size // 4 if cfg.train.loss_resolution == "low_res" else size
    logits = masks * 4 * res * res * 4  # fp32 logits of one round, kept with its prediction for the loss
    half = _precision(cfg, device) in HALF
    if cfg.model.decoder_checkpointing:  # each round keeps only its inputs; backward recomputes one round at once
        fed_back = masks * (size // 4) ** 2 * (2 if half else 4) if pr.feed_back_mask else 0
        decoder = (rounds - 1) * fed_back + rounds * 2 * logits
        recompute = masks * max(p.decoder_first, later)
    else:
        decoder = masks * (p.decoder_first + (rounds - 1) * later) + rounds * 2 * logits  # + the loss's saved inputs
        recompute = 0
    batch = images * (3 + 1) * size * size + masks * size * size  # uint8 images, bool valid and masks
    if cfg.model.activation_checkpointing and p.blocks:
        encoder = p.encoder_other + sum(p.block_inputs)
        attention = 0
        block = max(b + a for b, a in zip(p.blocks, p.attention, strict=True))
    else:
        encoder, attention, block = p.encoder_other + sum(p.blocks), sum(p.attention), 0
    workspace = 2 * max(p.attention, default=0) + block  # one block's attention gradients in backward
    return Estimate(parameters=4 * p.params + p.buffers, gradients=4 * p.trainable, optimizer=8 * p.trainable,
                    encoder=encoder * images, decoder=decoder + batch, attention=attention * images,
                    loss_transient=2 * logits, recompute=recompute, workspace=workspace * images,
                    weight_copies=2 * p.params if half else 0, trainable=p.trainable, total=p.params)


# -- the planner ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One set of changes to the config, its cost (how much it departs from the recipe) and estimate."""

    overrides: tuple[str, ...]
    cost: int
    estimate: Estimate

    @property
    def text(self) -> str:
        return " ".join(self.overrides) if self.overrides else "(as configured)"


#: Changes the planner tries, cheapest first: (override, cost). The lean attention is exact and not
#: slower; bf16 keeps the fp32 master weights; checkpointing costs about one more encoder forward
#: (encoder) or one more decoder forward per round (decoder: ~4 s of a ~57 s ViT-B step at 16 masks on a CPU);
#: LoRA trains fewer weights; fewer masks or images per step change SAM's recipe.
PEFT_CANDIDATES = ("{name: lora, rank: 8}", "{name: lora, rank: 8, targets: [q, v]}")


def _knobs(cfg: DictConfig, device: str) -> list[list[tuple[str | None, int]]]:
    m, d = cfg.model, cfg.data
    knobs: list[list[tuple[str | None, int]]] = [
        [(None, 0)] + ([("model.attention=sdpa", 0)] if m.attention != "sdpa" else []),
        [(None, 0)] + ([("train.precision=bf16", 1)] if _precision(cfg, device) not in HALF else []),
        [(None, 0)] + ([("model.activation_checkpointing=true", 2)] if not m.activation_checkpointing else []),
        [(None, 0)] + ([("model.decoder_checkpointing=true", 2)] if not m.decoder_checkpointing else []),
        [(None, 0)] + [(f"model.peft={spec}", 3) for spec in PEFT_CANDIDATES],
    ]
    masks = [d.max_masks // 2**k for k in range(1, 4) if d.max_masks // 2**k >= 1]
    knobs.append([(None, 0)] + [(f"data.max_masks={n}", 4 * (k + 1)) for k, n in enumerate(masks)])
    sizes = [d.batch_size // 2**k for k in range(1, 4) if d.batch_size // 2**k >= 1]
    knobs.append([(None, 0)] + [(f"data.batch_size={n}", 4 * (k + 1)) for k, n in enumerate(sizes)])
    return knobs


@dataclass(frozen=True)
class Plan:
    """The configured step's estimate, the candidates that fit (cheapest first) and the changes the
    config refused (e.g. ``model.peft`` before a PEFT method is registered)."""

    cfg: DictConfig
    estimate: Estimate
    fitting: list[Candidate]
    refused: list[str]


def plan(path: str | Path, overrides: list[str], budget: int, device: str = "cuda", top: int = 5) -> Plan:
    """Estimate the configured step and find the ``top`` cheapest candidates that fit ``budget`` bytes.

    Each change is first validated alone like a training config, so changes the config does not accept
    (``model.peft`` when no PEFT is available, fp16 on a CPU) are skipped and listed; then combinations
    are tried cheapest first, until ``top`` fit and costlier ones remain. Only minimal combinations are
    listed: none whose every change is the same as, or milder than, those of one that fits already
    (``data.max_masks=16`` is not listed when ``data.max_masks=32`` fits).
    """
    cfg = load(path, overrides)
    _check_modelled(cfg.model.name)
    knobs = _knobs(cfg, device)
    refused = [o for options in knobs for o, _ in options if o and _refused_alone(path, overrides, o)]
    knobs = [[(o, c) for o, c in options if o not in refused] for options in knobs]
    # A combination is one option index per knob (0: unchanged; higher: a stronger change). Cheapest
    # first; of equal cost, fewer changes first, so that a fitting set is found before those it dominates.
    combos = sorted(_product([list(range(len(options))) for options in knobs]),
                    key=lambda combo: (sum(knobs[k][i][1] for k, i in enumerate(combo)), sum(map(bool, combo))))
    fitting: list[Candidate] = []
    fitting_combos: list[list[int]] = []
    for combo in combos:
        cost = sum(knobs[k][i][1] for k, i in enumerate(combo))
        if len(fitting) >= top and cost > fitting[top - 1].cost:
            break
        if any(all(a <= b for a, b in zip(f, combo, strict=True)) for f in fitting_combos):
            continue  # milder changes fit already: these are not needed
        changes = tuple(knobs[k][i][0] for k, i in enumerate(combo) if i)
        try:
            candidate_cfg = load(path, [*overrides, *changes])
        except ConfigError:  # a combination the config refuses although each change alone is fine
            continue
        est = estimate(candidate_cfg, device)
        if est.peak <= budget:
            fitting.append(Candidate(changes, cost, est))
            fitting_combos.append(combo)
    fitting.sort(key=lambda c: (c.cost, c.estimate.peak))
    return Plan(cfg, estimate(cfg, device), fitting[:top], refused)


def _product(knobs: list[list[Any]]) -> list[list[Any]]:
    combos: list[list[Any]] = [[]]
    for options in knobs:
        combos = [[*c, o] for c in combos for o in options]
    return combos


def _refused_alone(path: str | Path, overrides: list[str], change: str) -> bool:
    try:
        load(path, [*overrides, change])
    except ConfigError:
        return True
    return False


def describe(result: Plan, budget: int, device: str, top: int = 5) -> str:
    """The planner's printout: the configured step's breakdown, then the cheapest settings that fit."""
    cfg, est = result.cfg, result.estimate
    m, d, pr = cfg.model, cfg.data, cfg.prompts
    rounds = 1 + pr.correction_clicks + pr.extra_rounds
    peft = m.get("peft")
    lines = [
        f"one training step of {m.name} at {m.image_size} px, {d.batch_size} image(s) x {d.max_masks} masks, "
        f"{rounds} rounds, {_precision(cfg, device)} on {device}: attention {m.attention}, activation checkpointing "
        f"{_checkpointed(m)}, peft {shown(peft) if peft else 'none (full fine-tuning)'}",
        f"weights: {est.total / 1e6:.1f}M, trainable {est.trainable / 1e6:.2f}M",
        "",
        "| memory | estimate |",
        "|---|---:|",
        *(f"| {name} | {gib(n)} |" for name, n in est.rows()),
        f"| transient (at the {max(est.moments, key=est.moments.get)}) | {gib(est.transient)} |",
        f"| **peak** | **{gib(est.peak)}** |",
        "",
        f"budget {gib(budget)}: " + ("fits as configured." if est.peak <= budget else "does not fit as configured."),
    ]
    if est.peak > budget or result.fitting and result.fitting[0].overrides:
        if result.fitting:
            lines += ["cheapest settings that fit (add to the command line):", "",
                      "| # | overrides | peak | trainable |", "|---:|---|---:|---:|"]
            lines += [f"| {i} | {c.text} | {gib(c.estimate.peak)} | {c.estimate.trainable / 1e6:.2f}M |"
                      for i, c in enumerate(result.fitting[:top], 1)]
        else:
            lines.append("nothing the planner tries fits: use a larger GPU, several GPUs or a smaller model.")
    if result.refused:
        lines += ["", f"not tried (the config does not accept them): {', '.join(result.refused)}"]
    return "\n".join(lines)


def _checkpointed(m: DictConfig) -> str:
    parts = [name for name, on in (("encoder", m.activation_checkpointing), ("decoder", m.decoder_checkpointing)) if on]
    return " + ".join(parts) if parts else "off"


def gib(n: int) -> str:
    """Bytes as GiB (or MiB below 0.1 GiB)."""
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"


__all__ = ["Candidate", "Estimate", "Plan", "describe", "estimate", "gib", "plan"]
