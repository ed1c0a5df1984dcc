"""Parameter-efficient fine-tuning (PEFT) of SAM: LoRA, AdaptFormer, SSF, bias-, norm- and attention-only.

A method changes a built model in place and never renames a weight of it: what it adds lives in child
modules called by forward hooks (``image_encoder.blocks.0.attn.qkv.lora.a.q``), and selection methods only
choose which base tensors train. So Meta's checkpoints load into the model before a method is applied,
segment_anything's modules run unchanged (the hooks add to their outputs), and :func:`merge_peft` can fold
the foldable methods back into exactly segment_anything's layout.

Every added parameter starts at the value that makes it a no-op (LoRA's B and the adapter's up
projection at zero, SSF's scale at one and shift at zero), so at step 0 the adapted model computes
exactly the base model's outputs: ``y + 0`` and ``y * 1 + 0`` are exact in floating point.

The base weights of the parts a method adapts (:attr:`PeftMethod.adapts`) are frozen; the other parts
train or stay frozen as the ``model.freeze_*`` flags say.
"""

from __future__ import annotations

import abc
import fnmatch
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from segment_anything.modeling.image_encoder import Block
from torch import nn
from torch.nn import functional as F

from samft.archs import PARTS
from samft.checks import OptionError, fail
from samft.models.build import keep_eval, spec_of
from samft.models.checkpoint import CheckpointError, weights_sha256
from samft.registry import PEFT

LORA_TARGETS = ("q", "k", "v", "qkv", "proj", "mlp", "decoder")
_QKV = ("q", "k", "v")  # LoRA targets inside a fused qkv Linear; the model's spec says which rows (qkv_rows)
_VIT_ONLY = ("proj", "mlp")  # LoRA targets that name segment_anything's ViT Block's modules


class PeftError(CheckpointError):
    """A PEFT option, model or checkpoint that does not fit; the message says what to do."""


# -- the added modules ------------------------------------------------------------------------------
class LoRA(nn.Module):
    """Low-rank update ``scale * B_s A_s x`` of chosen output slices ``s`` of a Linear.

    One (A, B) pair per slice, as SAMed and micro-sam adapt q and v inside SAM's fused ``qkv``
    projection: ``slices={"q": (0, C), "v": (2C, 3C)}``. A slice may also be a list of row ranges
    (TinyViT packs q, k and v per head): B then has a row per output row, in the ranges' order.
    A is Kaiming-uniform, B zero.

    Args:
        in_features: The Linear's input width.
        out_features: The Linear's output width.
        slices: name -> (start, stop), or a list of them, of the output rows updated.
        rank: Rank r of every update.
        alpha: Scale numerator: the update is multiplied by ``alpha / rank``.
        dropout: Dropout on the update's input (training only).
    """

    def __init__(self, in_features: int, out_features: int, slices: dict[str, tuple[int, int]], rank: int,
                 alpha: float, dropout: float) -> None:
        super().__init__()
        ranges = {n: [r] if isinstance(r[0], int) else [tuple(x) for x in r] for n, r in slices.items()}
        # One range: kept as (start, stop) and placed by padding; several: placed by their row indexes.
        self.out_features, self.scale = out_features, alpha / rank
        self.slices = {n: r[0] if len(r) == 1 else r for n, r in ranges.items()}
        self.a = nn.ParameterDict({n: nn.Parameter(torch.empty(rank, in_features)) for n in slices})
        self.b = nn.ParameterDict({n: nn.Parameter(torch.zeros(sum(stop - start for start, stop in r), rank))
                                   for n, r in ranges.items()})
        for n, r in ranges.items():
            if len(r) > 1:
                rows = torch.cat([torch.arange(start, stop) for start, stop in r])
                self.register_buffer(f"rows_{n}", rows, persistent=False)
        for a in self.a.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's own init, as LoRA's paper code
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update ``[..., out_features]`` (zero outside the slices)."""
        x = self.dropout(x)
        delta = None
        for name, where in self.slices.items():
            part = F.linear(F.linear(x, self.a[name]), self.b[name]) * self.scale
            if isinstance(where[0], int):
                part = F.pad(part, (where[0], self.out_features - where[1]))
            else:
                part = part.new_zeros(*part.shape[:-1], self.out_features).index_copy(
                    -1, getattr(self, f"rows_{name}"), part)
            delta = part if delta is None else delta + part
        return delta

    def delta_weight(self) -> torch.Tensor:
        """``[out, in]``: what the update adds to the Linear's weight, computed in float64."""
        a0 = next(iter(self.a.values()))
        weight = torch.zeros(self.out_features, a0.shape[1], dtype=torch.float64, device=a0.device)
        for name, where in self.slices.items():
            update = self.b[name].double() @ self.a[name].double() * self.scale
            if isinstance(where[0], int):
                weight[where[0]:where[1]] += update
            else:
                weight.index_add_(0, getattr(self, f"rows_{name}"), update)
        return weight


class Adapter(nn.Module):
    """AdaptFormer's bottleneck ``scale * up(relu(down(x)))``, added beside a block's MLP; up starts at 0."""

    def __init__(self, dim: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.down, self.up, self.scale = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim), scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x))) * self.scale


class ScaleShift(nn.Module):
    """SSF's ``y * scale + shift`` over the last (channel) dimension; scale starts at 1, shift at 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.shift


# -- hooks: the added modules run beside or after segment_anything's, which stay untouched -----------
def _add_parallel(module: nn.Module, name: str, added: nn.Module) -> None:
    """``module(x)`` becomes ``module(x) + added(x)``."""
    _attach(module, name, added, functools.partial(_parallel_hook, name))


def _add_after(module: nn.Module, name: str, added: nn.Module) -> None:
    """``module(x)`` becomes ``added(module(x))``."""
    _attach(module, name, added, functools.partial(_after_hook, name))


def _attach(module: nn.Module, name: str, added: nn.Module, hook: Any) -> None:
    if hasattr(module, name):
        raise PeftError(f"{type(module).__name__} already has a {name!r}: a PEFT method was applied twice.")
    base = next(module.parameters(), None)  # the added weights live where the base's do, in its dtype
    module.add_module(name, added if base is None else added.to(device=base.device, dtype=base.dtype))
    handles = module.__dict__.setdefault("_samft_peft_hooks", {})
    handles[name] = module.register_forward_hook(hook)


def _detach(module: nn.Module, name: str) -> None:
    module.__dict__["_samft_peft_hooks"].pop(name).remove()
    delattr(module, name)


def _parallel_hook(name: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
    return output + getattr(module, name)(inputs[0])


def _after_hook(name: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
    return getattr(module, name)(output)


# -- the methods ----------------------------------------------------------------------------------
class PeftMethod(abc.ABC):
    """What every PEFT method provides (see :data:`samft.registry.PEFT`).

    Where a method applies comes from the model's registry entry (:func:`samft.models.spec_of`): its
    ``parts``, its ``encoder_blocks`` (what ``blocks`` counts) and its ``peft_targets``.

    Attributes:
        adapts: The SAM parts whose base weights the method freezes (its own parameters train).
        foldable: True when :meth:`merge` can fold the method into the base weights.
        needs_vit_blocks: True when the method reaches into segment_anything's ViT ``Block`` (its
            ``norm1``, ``attn.proj``, ``mlp.lin1``, ...), so it fits only encoders made of them.
    """

    adapts: frozenset[str] = frozenset({"image_encoder"})
    foldable = True
    needs_vit_blocks = False

    def __init__(self, blocks: Sequence[int] | None = None) -> None:
        if blocks is not None:
            if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable) or not list(blocks) or not all(
                    isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks):
                raise fail("blocks", f"blocks must be null (every encoder block) or a list of block indexes >= 0; "
                                f"got {blocks!r}")
        self.blocks = None if blocks is None else sorted(set(blocks))

    def check(self, encoder_depth: int, parts: Sequence[str] = PARTS) -> None:
        """Raise :class:`PeftError` when an option does not fit an encoder of ``encoder_depth`` blocks,
        or an :class:`OptionError` when the method adapts a part the model does not have (``parts``)."""
        unknown = sorted(self.adapts - set(parts))
        if unknown:
            raise fail("parts", f"parts names {unknown[0]!r}: use a list of {', '.join(parts)}")
        if self.blocks and self.blocks[-1] >= encoder_depth:
            raise PeftError(f"blocks names block {self.blocks[-1]}, but the image encoder has {encoder_depth} "
                            f"blocks (0-{encoder_depth - 1})")

    def apply(self, model: nn.Module) -> None:
        """Adapt ``model`` in place: freeze the adapted parts' base weights, add the method's parameters."""
        spec = spec_of(model)
        blocks = spec.encoder_blocks(model)
        if "image_encoder" in self.adapts and self.needs_vit_blocks and not all(isinstance(b, Block) for b in blocks):
            raise PeftError(f"{type(model.image_encoder).__name__} ({spec.name}) has no ViT blocks for "
                            f"{self.describe()}: use lora (targets q, k, v, qkv or decoder), bias, norm or attention.")
        try:
            self.check(len(blocks), spec.parts)
        except OptionError as exc:
            raise PeftError(f"model.peft ({spec.name}): {exc}") from None
        for part in self.adapts:
            getattr(model, part).requires_grad_(False)
            # BatchNorm (MobileSAM's TinyViT) would move its running statistics in train mode: frozen
            # base buffers that a PEFT checkpoint does not hold, so evaluation would see other ones.
            for module in getattr(model, part).modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    keep_eval(module, True)
        self._apply(model)

    def describe(self) -> str:
        """The method as a user names it, for messages."""
        return type(self).__name__.removesuffix("Method").lower()

    @abc.abstractmethod
    def _apply(self, model: nn.Module) -> None:
        """Add the method's parameters to ``model`` (its adapted parts' base weights are frozen already)."""

    def merge(self, model: nn.Module) -> None:
        """Fold the method into the base weights and remove what it added (the model is then a plain SAM)."""
        if not self.foldable:
            raise PeftError(f"{type(self).__name__} cannot be folded into SAM's weights (it adds non-linear "
                            "layers); use the adapted model (samft.engine.build.model_from_config) instead.")

    def _blocks(self, model: nn.Module) -> Iterator[nn.Module]:
        for i, block in enumerate(spec_of(model).encoder_blocks(model)):
            if self.blocks is None or i in self.blocks:
                yield block

    def _in_blocks(self, block: int | None) -> bool:
        """Whether a module of encoder block ``block`` (None: of no block, e.g. the neck) is adapted."""
        return block is None or self.blocks is None or block in self.blocks


def _block_locator(model: nn.Module) -> Callable[[str], tuple[int, str] | None]:
    """``name -> (i, name inside the block)`` when the module or parameter ``name`` (relative to the
    model) lies in the model's encoder block ``i`` (its entry's ``encoder_blocks``), else None."""
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = [names[id(b)] + "." for b in spec_of(model).encoder_blocks(model)]

    def locate(name: str) -> tuple[int, str] | None:
        return next(((i, name[len(p):]) for i, p in enumerate(prefixes) if name.startswith(p)), None)

    return locate


def _index(where: tuple[int, str] | None) -> int | None:
    return None if where is None else where[0]


@PEFT.register("lora")
class LoRAMethod(PeftMethod):
    """LoRA (Hu et al. 2021): ``W x + (alpha / rank) B A x`` on the targeted Linear layers.

    Args:
        rank: Rank of every update (SAMed: 4).
        alpha: The update is scaled by ``alpha / rank``; null: ``alpha = rank`` (scale 1, as SAMed).
        dropout: Dropout on the updates' input.
        targets: Any of ``q``, ``k``, ``v`` (their rows inside each encoder block's fused ``qkv``,
            SAMed's and micro-sam's choice), ``qkv`` (the whole fused projection): these wrap the
            Linears the model's entry names (``peft_targets``, rows by its ``qkv_rows``), so they fit
            every registered model; ``proj`` (the attention output) and ``mlp`` (both MLP Linears) of
            segment_anything's ViT blocks; ``decoder`` (every Linear of the mask decoder's two-way
            transformer).
        blocks: Encoder blocks adapted; null: all.
    """

    def __init__(self, rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
                 targets: Sequence[str] = ("q", "v"), blocks: Sequence[int] | None = None) -> None:
        super().__init__(blocks)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise fail("rank", f"rank must be a whole number >= 1; got {rank!r}")
        if alpha is not None and (not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or
                                  not math.isfinite(alpha) or alpha <= 0):
            raise fail("alpha", f"alpha must be a number > 0 (or null for alpha = rank); got {alpha!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise fail("dropout", f"dropout must be a number in [0, 1); got {dropout!r}")
        targets = [targets] if isinstance(targets, str) else list(targets)
        unknown = [t for t in targets if t not in LORA_TARGETS]
        if unknown or not targets:
            raise fail("targets", f"targets names {unknown[0] if unknown else 'nothing'!r}: use a list of "
                            f"{', '.join(LORA_TARGETS)}")
        if "qkv" in targets and set(targets) & set(_QKV):
            raise fail("targets", "targets names qkv and some of q, k, v: the whole fused projection already "
                            "includes them; keep one")
        self.rank, self.alpha, self.dropout = rank, float(alpha if alpha is not None else rank), float(dropout)
        self.targets = tuple(dict.fromkeys(targets))
        self.needs_vit_blocks = bool(set(self.targets) & set(_VIT_ONLY))
        parts = {"mask_decoder"} if "decoder" in self.targets else set()
        if set(self.targets) - {"decoder"}:
            parts.add("image_encoder")
        self.adapts = frozenset(parts)

    def _lora(self, linear: nn.Linear, slices: dict[str, tuple[int, int]]) -> None:
        _add_parallel(linear, "lora", LoRA(linear.in_features, linear.out_features, slices, self.rank,
                                           self.alpha, self.dropout))

    def _linears(self, model: nn.Module) -> Iterator[tuple[nn.Linear, dict[str, Any]]]:
        spec, locate = spec_of(model), _block_locator(model)
        fused = [t for t in self.targets if t in _QKV or t == "qkv"]
        found = 0
        for name, qkv in model.named_modules() if fused else ():  # the entry's peft_targets, in the chosen blocks
            if not (isinstance(qkv, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in spec.peft_targets)
                    and self._in_blocks(_index(locate(name)))):
                continue
            found += 1
            layout = spec.qkv_rows(model, name)
            rows = {t: layout[t] for t in self.targets if t in _QKV}
            if rows:
                yield qkv, rows
            if "qkv" in self.targets:
                yield qkv, {"qkv": (0, qkv.out_features)}
        if fused and not found:
            where = f"blocks {self.blocks}" if self.blocks else "the model"
            raise PeftError(f"{spec.name}'s peft_targets ({', '.join(spec.peft_targets)}) match no Linear in "
                            f"{where}: choose blocks that hold attention (or null for all).")
        for block in self._blocks(model) if set(self.targets) & set(_VIT_ONLY) else ():
            if "proj" in self.targets:
                yield block.attn.proj, {"proj": (0, block.attn.proj.out_features)}
            if "mlp" in self.targets:
                for lin in (block.mlp.lin1, block.mlp.lin2):
                    yield lin, {"mlp": (0, lin.out_features)}
        if "decoder" in self.targets:
            for module in model.mask_decoder.transformer.modules():
                if isinstance(module, nn.Linear):
                    yield module, {"decoder": (0, module.out_features)}

    def _apply(self, model: nn.Module) -> None:
        for linear, slices in list(self._linears(model)):
            self._lora(linear, slices)

    def merge(self, model: nn.Module) -> None:
        for module in list(model.modules()):
            if isinstance(module, nn.Linear) and isinstance(getattr(module, "lora", None), LoRA):
                with torch.no_grad():
                    merged = module.weight.double() + module.lora.delta_weight()
                    module.weight.copy_(merged.to(module.weight.dtype))
                _detach(module, "lora")


@PEFT.register("adaptformer")
class AdaptFormerMethod(PeftMethod):
    """AdaptFormer (Chen et al. 2022): a bottleneck adapter in parallel with each encoder block's MLP.

    The adapter reads what the MLP reads (the block's stream after ``norm2``) and its output is added
    to the MLP's: ``x + mlp(norm2(x)) + scale * up(relu(down(norm2(x))))``. (AdaptFormer's adapter reads
    the stream before the norm; reading the MLP's input lets it hang on segment_anything's MLP by a hook
    instead of replacing ``Block.forward``.) Non-linear, so it cannot be merged into SAM's weights.

    Args:
        bottleneck: Width of the adapter's hidden layer (AdaptFormer: 64).
        scale: Multiplier of the adapter's output (AdaptFormer: 0.1).
        blocks: Encoder blocks adapted; null: all.
    """

    foldable = False
    needs_vit_blocks = True

    def __init__(self, bottleneck: int = 64, scale: float = 0.1, blocks: Sequence[int] | None = None) -> None:
        super().__init__(blocks)
        if not isinstance(bottleneck, int) or isinstance(bottleneck, bool) or bottleneck < 1:
            raise fail("bottleneck", f"bottleneck must be a whole number >= 1; got {bottleneck!r}")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
            raise fail("scale", f"scale must be a number > 0; got {scale!r}")
        self.bottleneck, self.scale = bottleneck, float(scale)

    def _apply(self, model: nn.Module) -> None:
        for block in self._blocks(model):
            _add_parallel(block.mlp, "adapter", Adapter(block.mlp.lin1.in_features, self.bottleneck, self.scale))


@PEFT.register("ssf")
class SSFMethod(PeftMethod):
    """SSF (Lian et al. 2022): a learned per-channel scale and shift after each encoder block's Linear
    layers (qkv, proj, both MLP layers) and LayerNorms. Foldable: ``W' = diag(s) W``, ``b' = s b + t``.

    Args:
        blocks: Encoder blocks adapted; null: all.
    """

    needs_vit_blocks = True

    def __init__(self, blocks: Sequence[int] | None = None) -> None:
        super().__init__(blocks)

    def _apply(self, model: nn.Module) -> None:
        for block in self._blocks(model):
            for module in (block.norm1, block.attn.qkv, block.attn.proj, block.norm2, block.mlp.lin1, block.mlp.lin2):
                width = module.out_features if isinstance(module, nn.Linear) else module.normalized_shape[-1]
                _add_after(module, "ssf", ScaleShift(width))

    def merge(self, model: nn.Module) -> None:
        for module in list(model.modules()):
            ssf = getattr(module, "ssf", None)
            if not isinstance(ssf, ScaleShift):
                continue
            with torch.no_grad():
                scale, shift = ssf.scale.double(), ssf.shift.double()
                weight = module.weight.double()
                module.weight.copy_((weight * (scale[:, None] if weight.dim() == 2 else scale)).to(module.weight.dtype))
                module.bias.copy_((module.bias.double() * scale + shift).to(module.bias.dtype))
            _detach(module, "ssf")


class _Selection(PeftMethod):
    """Trains a chosen subset of the base tensors; everything else of the adapted parts stays frozen.
    Nothing is added, so there is nothing to fold: the trained tensors are the base tensors.
    ``parts`` are checked against the model's (its entry's ``parts``) when the method is applied."""

    def __init__(self, parts: Sequence[str] = ("image_encoder",), blocks: Sequence[int] | None = None) -> None:
        super().__init__(blocks)
        parts = [parts] if isinstance(parts, str) else list(parts)
        if not parts or not all(isinstance(p, str) and p for p in parts):
            raise fail("parts", f"parts must be a list of the model's parts (e.g. {', '.join(PARTS)}); "
                       f"got {parts!r}")
        self.adapts = frozenset(parts)

    def _apply(self, model: nn.Module) -> None:
        locate = _block_locator(model)
        for part in self.adapts:
            for name, param in getattr(model, part).named_parameters():
                # Blocks are the image encoder's (other parts' parameters are in no block).
                where = locate(f"{part}.{name}") if part == "image_encoder" else None
                if self._selected(model, part, name, where) and self._in_blocks(_index(where)):
                    param.requires_grad_(True)

    @abc.abstractmethod
    def _selected(self, model: nn.Module, part: str, name: str, where: tuple[int, str] | None) -> bool:
        """Whether parameter ``name`` of ``part`` trains (``where``: its encoder block and name in it, or None)."""


@PEFT.register("bias")
class BiasMethod(_Selection):
    """BitFit (Ben Zaken et al. 2022): train only the biases of the adapted parts.

    Args:
        parts: SAM parts whose biases train while their other weights stay frozen (default: image_encoder).
        blocks: Encoder blocks whose biases train; null: all (and the neck's).
    """

    def _selected(self, model: nn.Module, part: str, name: str, where: tuple[int, str] | None) -> bool:
        return name.endswith("bias")


@PEFT.register("norm")
class NormMethod(_Selection):
    """Train only the normalisation layers' weights and biases (LayerNorm, LayerNorm2d) of the adapted parts.

    Args:
        parts: SAM parts whose norms train (default: image_encoder).
        blocks: Encoder blocks whose norms train; null: all (and the neck's).
    """

    def _selected(self, model: nn.Module, part: str, name: str, where: tuple[int, str] | None) -> bool:
        owner = getattr(model, part).get_submodule(name.rpartition(".")[0])
        return "Norm" in type(owner).__name__


@PEFT.register("attention")
class AttentionMethod(_Selection):
    """Train only the image encoder blocks' attention (qkv, proj and the relative position tables).

    Args:
        blocks: Encoder blocks whose attention trains; null: all.
    """

    def __init__(self, blocks: Sequence[int] | None = None) -> None:
        super().__init__(("image_encoder",), blocks)

    def _selected(self, model: nn.Module, part: str, name: str, where: tuple[int, str] | None) -> bool:
        return where is not None and where[1].startswith("attn.")


# -- applying, counting, saving -------------------------------------------------------------------
def apply_peft(model: nn.Module, spec: dict[str, Any] | str | None) -> PeftMethod | None:
    """Apply the method ``spec`` names (``{name: lora, rank: 8}``; None: full fine-tuning) to ``model``.

    The method is kept as ``model.samft_peft`` for :func:`merge_peft` and checkpointing."""
    if not spec:
        return None
    method = PEFT.build(spec if isinstance(spec, str) else dict(spec))
    method.apply(model)
    model.samft_peft = method
    return method


def merge_peft(model: nn.Module) -> nn.Module:
    """Fold the model's PEFT method into its base weights; afterwards it is a plain SAM (same keys as
    segment_anything's). Raises :class:`PeftError` for methods that cannot be folded."""
    method = getattr(model, "samft_peft", None)
    if method is not None:
        method.merge(model)
        del model.samft_peft
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of ``model``."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries of the parameters that train: what a PEFT checkpoint stores."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a PEFT checkpoint's tensors: exactly the model's trainable ones, else one-line error."""
    expected = trainable_state(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        first = (missing or unexpected or misshaped)[0]
        raise PeftError(f"{where} does not hold this config's trainable tensors ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(misshaped)} of another shape, e.g. {first}): its "
                        "model.peft or model.freeze_* differ from the config's. Use the run's own config.yaml.")
    model.load_state_dict(state, strict=False)


def base_identity(model: nn.Module, path: str | None, seed: int | None = None) -> dict[str, Any]:
    """What a PEFT checkpoint records of the base weights it adapts: their file (None: a random
    initialisation from ``seed``) and the sha256 of the weights themselves (:func:`weights_sha256`)."""
    state = model.state_dict()
    # A model built on the meta device (to plan memory, no values) has no weights to identify.
    digest = None if any(t.is_meta for t in state.values()) else weights_sha256(state)
    identity = {"path": path, "sha256": digest}
    return identity if path is not None else {**identity, "seed": seed}


def check_base(saved: dict[str, Any], identity: dict[str, Any], where: str) -> None:
    """Refuse a PEFT checkpoint trained on other base weights than the model's, in one line."""
    if saved.get("sha256") == identity["sha256"]:
        return

    def described(ident: dict[str, Any]) -> str:
        origin = ident.get("path") or f"drawn at random from train.seed={ident.get('seed')}"
        return f"{origin} (sha256 {str(ident.get('sha256'))[:12]})"

    fix = (f"set model.checkpoint={saved['path']}" if saved.get("path")
           else f"set model.checkpoint=null train.seed={saved.get('seed')}")
    raise PeftError(f"{where} adapts the base weights {described(saved)}, not {described(identity)}: "
                    f"{fix} (the base it was trained on).")
