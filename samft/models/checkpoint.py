"""Load SAM weights (Meta's releases or samft checkpoints) with a clear report of what does not fit."""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samft.errors import UserError
from samft.models.build import ARCHS, PATCH_SIZE, spec_of
from samft.safe_load import load_failure_reason

_EMBED_KEY = "image_encoder.patch_embed.proj.weight"  # SAM's ViT patch embedding [C, 3, 16, 16]
_TINY_VIT_STEM_KEY = "image_encoder.patch_embed.seq.0.c.weight"  # MobileSAM's TinyViT stem conv
_HQ_TOKEN_KEY = "mask_decoder.hf_token.weight"  # HQ-SAM's output token
_HIERA_EMBED_KEY = "image_encoder.trunk.patch_embed.proj.weight"  # SAM 2's Hiera patch embedding [C, 3, 7, 7]


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded into the configured model; the message says what to do."""


def read_checkpoint(path: str | Path) -> Any:
    """The object in a weights file, read with ``torch.load(weights_only=True)``: no code from it runs."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} does not exist. Set model.checkpoint to a SAM .pth file (e.g. "
            "sam_vit_b_01ec64.pth) or to null to start from random weights."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Checkpoint {path} could not be read as weights: {load_failure_reason(exc)}.") from None


def read_state_dict(path: str | Path, obj: Any = None) -> dict[str, torch.Tensor]:
    """Read model weights from a SAM ``.pth`` or a samft training checkpoint (key ``model``).

    Args:
        obj: What :func:`read_checkpoint` returned for ``path``, when the caller read it already.
    """
    obj = read_checkpoint(path) if obj is None else obj
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"Checkpoint {path} holds no state dict of tensors.")
    return obj


def load_weights(model: nn.Module, path: str | Path, model_name: str = "", obj: Any = None) -> None:
    """Load weights into ``model``, failing with one paragraph when keys or shapes disagree.

    Args:
        obj: What :func:`read_checkpoint` returned for ``path``, when the caller read it already.
    """
    state = read_state_dict(path, obj)
    own = model.state_dict()
    # A model that adds parameters to a released one (HQ-SAM on SAM) starts from the released weights
    # with its additions at their initialisation, as its own training does.
    added = [k for k in set(own) - set(state) if _is_addition(model, k)]
    if added and len(added) < len(own):
        state = {**state, **{k: own[k] for k in added}}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        raise CheckpointError(_mismatch_message(path, model_name, state, own, missing, unexpected, misshaped))
    model.load_state_dict(state)


def _is_addition(model: nn.Module, key: str) -> bool:
    """Whether ``key`` is one of the parameters the model's registry entry adds and trains alone."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in spec_of(model).trainable)


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """Name of the SAM variant whose image-encoder width matches the checkpoint, if any."""
    if _TINY_VIT_STEM_KEY in state:
        return "vit_t"
    if _HIERA_EMBED_KEY in state:  # SAM 2.1: Hiera's width and number of blocks
        depth = len({k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")})
        width = state[_HIERA_EMBED_KEY].shape[0]
        names = [n for n, a in ARCHS.items() if a.encoder == "hiera" and (a.embed_dim, a.depth) == (width, depth)]
        return names[0] if names else None
    weight = state.get(_EMBED_KEY)
    if weight is None:
        return None
    decoder = "hq" if _HQ_TOKEN_KEY in state else "sam"
    names = [name for name, arch in ARCHS.items()
             if arch.encoder == "vit" and arch.decoder == decoder and arch.embed_dim == weight.shape[0]]
    return names[0] if names else None


def guess_image_size(state: dict[str, torch.Tensor]) -> int | None:
    """Input side the checkpoint was trained at: its position embedding is ``[1, S/16, S/16, C]``."""
    pos = state.get("image_encoder.pos_embed")
    return int(pos.shape[1]) * PATCH_SIZE if pos is not None and pos.dim() == 4 else None


def _mismatch_message(path, model_name, state, own, missing, unexpected, misshaped) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing from the checkpoint ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({few(unexpected)})")
    if misshaped:
        k = misshaped[0]
        parts.append(
            f"{len(misshaped)} keys of another shape (e.g. {k}: checkpoint {tuple(state[k].shape)} vs "
            f"model {tuple(own[k].shape)})"
        )
    guess, size = guess_arch(state), guess_image_size(state)
    settings = " ".join(([f"model.name={guess}"] if guess else []) + ([f"model.image_size={size}"] if size else []))
    fix = (f"It looks like a checkpoint of {settings}: set {settings} (or evaluate with the run's own "
           "config.yaml)." if settings else "Check that model.name and model.image_size match the checkpoint.")
    return f"Checkpoint {path} does not fit model {model_name or '(unnamed)'}: {'; '.join(parts)}. {fix}"


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (key order does not matter): the
    identity of a model's base weights, whichever file (or seed) they came from."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # reshape: a 0-d tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
