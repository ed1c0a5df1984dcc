"""Build the models of the registry ``samft.registry.MODELS`` by name; freeze parts; checkpoint activations.

``vit_b``, ``vit_l`` and ``vit_h`` are exactly segment_anything's architectures (so Meta's released
checkpoints load into them); ``vit_tiny`` is a small variant made from the same modules for CPU
runs, demos and tests; ``vit_t`` is MobileSAM (TinyViT encoder, SAM's prompt encoder and decoder).
Every built-in is a :class:`segment_anything.modeling.Sam`; the entries are in :mod:`samft.models.zoo`.
"""

from __future__ import annotations

import fnmatch
import types

import torch
import torch.utils.checkpoint
from segment_anything.modeling import Sam
from torch import nn

from samft.archs import ARCHS, PATCH_SIZE, PIXEL_MEAN, PIXEL_STD
from samft.errors import UserError
from samft.models.attention import use_attention
from samft.models.forward import CHECKPOINTED
from samft.registry import MODELS, did_you_mean

__all__ = ["ARCHS", "PIXEL_MEAN", "PIXEL_STD", "UnsupportedModel", "build_model", "checkpoint_activations", "freeze",
           "require_sam", "spec_of"]

# The registry name a model was built under, stamped on it so the engine can look up its spec.
_NAME_ATTR = "samft_model_name"


def build_model(name: str, image_size: int = 1024, attention: str = "eager") -> Sam:
    """Build an untrained model of the registry ``MODELS``, in train mode.

    Args:
        name: ``vit_b``, ``vit_l``, ``vit_h``, ``vit_tiny``, ``vit_t`` or a plugin's name.
        image_size: Square input side (multiple of 16). Fixed at 1024 for ``vit_b/l/h``.
        attention: ``eager`` (segment_anything's image-encoder attention) or ``sdpa`` (the same values
            through one fused call that stores no attention matrix, :mod:`samft.models.attention`).
            Parameters are the same either way; encoders without segment_anything's ``Attention``
            (TinyViT) are unaffected.

    Returns:
        A ``Sam``-shaped model whose image embedding is ``image_size/16`` and low-res masks ``image_size/4``.
    """
    if name not in MODELS.names():
        raise ValueError(f"Unknown model {name!r}.{did_you_mean(name, MODELS.names())} "
                         f"Known: {', '.join(MODELS.names())}.")
    arch = ARCHS.get(name)
    if arch is not None and arch.fixed_image_size is not None and image_size != arch.fixed_image_size:
        raise ValueError(
            f"model.image_size={image_size} does not fit {name}: its positional embeddings and released "
            f"checkpoints are for {arch.fixed_image_size}. Use model.image_size={arch.fixed_image_size} "
            "or model.name=vit_tiny."
        )
    multiple = arch.size_multiple if arch is not None else PATCH_SIZE
    if image_size % multiple:
        raise ValueError(f"model.image_size={image_size} must be a multiple of {multiple}.")
    model = MODELS.get(name)(image_size)
    setattr(model, _NAME_ATTR, name)
    return use_attention(model, attention).train()


def spec_of(model: nn.Module):
    """The registry entry (``samft.models.zoo.ModelSpec``) ``model`` was built from; ``vit_b``'s for a
    SAM that ``build_model`` did not build (e.g. segment_anything's own): its rules fit every ViT SAM."""
    return MODELS.get(getattr(model, _NAME_ATTR, "vit_b"))


class UnsupportedModel(UserError, ValueError):
    """A tool that cannot run the model it was given; the message says what to use instead."""


class NothingToTrain(UserError, ValueError):
    """The ``model.freeze_*`` flags leave no parameter of the model's parts to train."""


def require_sam(model: nn.Module, tool: str) -> None:
    """Raise :class:`UnsupportedModel` unless ``model`` is a segment_anything ``Sam``, which ``tool`` (built on
    segment_anything's ``SamPredictor`` / automatic mask generator) calls with SAM's own signatures."""
    if not isinstance(model, Sam):
        name = getattr(model, _NAME_ATTR, type(model).__name__)
        raise UnsupportedModel(
            f"{tool} runs segment_anything's predictor, which cannot run {name} (SAM 2.1). Export it with "
            "tools/export.py --format sam and use sam2's SAM2ImagePredictor / SAM2AutomaticMaskGenerator; "
            "samft's training and tools/evaluate.py (prompted) run it.")


def freeze(model: Sam, *, adapters: bool = False, **parts: bool) -> None:
    """Turn off gradients of the chosen parts; frozen parts also stay in eval mode in training.

    The parts are the model entry's ``parts`` (SAM's: ``image_encoder``, ``prompt_encoder``,
    ``mask_decoder``); a part not named is unfrozen again, a submodule that is no part always trains,
    and the entry's ``trainable`` patterns (HQ-SAM: only its additions) apply on top.

    Eval mode matters for encoders with BatchNorm (MobileSAM's TinyViT): in train mode its running
    statistics would move with every batch, so a "frozen" encoder would change its embeddings.

    Args:
        adapters: A PEFT method will add trainable parameters, so all parts may be frozen.
        parts: ``part=True`` freezes that part, e.g. ``freeze(model, image_encoder=True)``.
    """
    spec = spec_of(model)
    unknown = [part for part, frozen in parts.items() if frozen and part not in spec.parts]
    if unknown:
        raise ValueError(f"model.freeze_{unknown[0]}=true: {spec.name} has no part {unknown[0]} that can be frozen "
                         f"(its parts: {', '.join(spec.parts)}); set it to false.")
    for part in spec.parts:
        module, frozen = getattr(model, part), bool(parts.get(part, False))
        for param in module.parameters():
            param.requires_grad_(not frozen)
        keep_eval(module, frozen)
    only = spec.trainable  # e.g. HQ-SAM: only its additions ever train
    if only:
        for name, param in model.named_parameters():
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in only):
                param.requires_grad_(False)
    if not adapters and not any(p.requires_grad for p in model.parameters()):
        raise NothingToTrain(f"model.freeze_*: with these flags nothing of {spec.name}'s trainable parameters "
                             f"({', '.join(spec.parts)}) would train; set one of model.freeze_"
                             f"{', model.freeze_'.join(spec.parts)} to false.")


def keep_eval(module: nn.Module, frozen: bool) -> None:
    """Make ``module.train(True)`` (called by its parent's ``train``) leave a frozen module in eval mode."""
    module.__dict__.pop("train", None)
    if frozen:
        # A bound method, not a closure: copy.deepcopy rebinds it to the copy.
        module.train = types.MethodType(_train_frozen, module)
        module.eval()


def _train_frozen(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def checkpoint_activations(model: Sam, *, encoder: bool = True, decoder: bool = False) -> None:
    """Recompute activations in backward instead of storing them; gradients are unchanged.

    Args:
        encoder: Each image-encoder block's (one more encoder forward): what makes ViT-H at 1024 px
            fit on smaller GPUs.
        decoder: Each interactive round's prompt encoder and mask decoder call
            (:func:`samft.models.forward.decode_masks`, one more decoder forward per round): what the
            decoder keeps is per mask, about 100 MB per mask and round at 1024 px in fp32.

    Non-reentrant ``torch.utils.checkpoint``: exact, also under autocast and with dropout (LoRA's).
    """
    if decoder:
        setattr(model.mask_decoder, CHECKPOINTED, True)
    if not encoder:
        return
    for block in spec_of(model).encoder_blocks(model):
        if getattr(block, CHECKPOINTED, False):
            continue
        plain_forward = block.forward
        norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

        def forward(x: torch.Tensor, _plain=plain_forward, _norms=norms) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return _plain(x)
            if not _norms:
                return torch.utils.checkpoint.checkpoint(_plain, x, use_reentrant=False)
            calls = []

            def run(inp: torch.Tensor) -> torch.Tensor:
                # The recomputation in backward must not move BatchNorm's running statistics a second
                # time (MobileSAM's TinyViT): the forward already did. It normalises with the batch's
                # own statistics either way, so its outputs are the forward's.
                if not calls:
                    calls.append(1)
                    return _plain(inp)
                kept = [{k: v.clone() for k, v in norm.named_buffers(recurse=False)} for norm in _norms]
                try:
                    return _plain(inp)
                finally:  # also when the checkpoint stops the recomputation early (its default)
                    with torch.no_grad():
                        for norm, buffers in zip(_norms, kept):
                            for k, v in buffers.items():
                                getattr(norm, k).copy_(v)

            return torch.utils.checkpoint.checkpoint(run, x, use_reentrant=False)

        block.forward = forward
        setattr(block, CHECKPOINTED, True)
