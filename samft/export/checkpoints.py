"""Find the model inside whatever a user points at: a run folder, ``best.pt``/``last.pt``, an exported file.

A samft training checkpoint holds the optimiser, schedules and RNG states beside the weights, and the
architecture only as the run's YAML; this module turns any of them into (weights, model name, input
size) and a ready :class:`segment_anything.modeling.Sam`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from segment_anything.modeling import Sam

from samft.models import ARCHS, CheckpointError, build_model
from samft.models.checkpoint import guess_arch

# Wrappers that prefix every key: DDP / DataParallel (module.), torch.compile (_orig_mod.),
# Lightning-style modules (model.). Meta's layout has none, and its loader is strict.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
SIDECAR_SUFFIX = ".samft.json"


class ExportError(CheckpointError):
    """A file that is not a checkpoint samft can read; the message says what to pass instead."""


@dataclass
class ResolvedCheckpoint:
    path: Path            # the weights file actually read
    state: dict[str, torch.Tensor]
    name: str             # a MODELS name: vit_b | vit_l | vit_h | vit_tiny | vit_t | hq_* | sam2_1_hiera_*
    image_size: int


def resolve(path: str | Path) -> ResolvedCheckpoint:
    """Read a run folder, a samft checkpoint, an exported ``.pth`` (with its sidecar) or Meta's ``.pth``.

    Raises:
        ExportError: the path does not exist or holds none of these.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = _checkpoint_of_run(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist. Pass a run folder (outputs/RUN), its checkpoints/best.pt "
                          "or last.pt, or a SAM .pth file.")
    obj = _load(path)
    if isinstance(obj, dict) and isinstance(obj.get("peft"), dict):
        return _merged_peft(path, obj)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and set(obj) == {"model"} and not _run_config(path):
        state = obj["model"]  # a release that wraps its weights (SAM 2.1's sam2.1_hiera_*.pt layout)
        name, size = _arch_of_plain_weights(path, state)
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state, (name, size) = obj["model"], _arch_of_training_checkpoint(path, obj)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, (name, size) = obj, _arch_of_plain_weights(path, obj)
    else:
        raise ExportError(f"{path} is not a samft checkpoint (no 'model' weights) nor a SAM state dict. "
                          "Pass outputs/RUN or outputs/RUN/checkpoints/best.pt.")
    return ResolvedCheckpoint(path, strip_prefixes(state), name, size)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Sam:
    """The SAM in ``path`` (anything :func:`resolve` accepts), weights checked key by key, in eval mode."""
    ckpt = resolve(path)
    model = build_model(ckpt.name, ckpt.image_size)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(ckpt.state)), sorted(set(ckpt.state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(ckpt.state) if own[k].shape != ckpt.state[k].shape)
    if missing or unexpected or bad_shape:
        first = (missing or unexpected or bad_shape)[0]
        raise ExportError(f"{ckpt.path} does not fit {ckpt.name} at {ckpt.image_size} px: {len(missing)} missing, "
                          f"{len(unexpected)} unexpected, {len(bad_shape)} misshaped keys (e.g. {first}). "
                          "Was it written by another samft version or edited?")
    model.load_state_dict(ckpt.state)
    return model.to(device).eval()


def _merged_peft(path: Path, obj: dict[str, Any]) -> ResolvedCheckpoint:
    """A PEFT run's checkpoint (trained tensors + the base's identity) as full weights: the base is
    read from the file the checkpoint names (checked by its sha256), adapted, and the method folded in."""
    from samft.engine.build import model_from_config
    from samft.models import merge_peft
    from samft.models.peft import PeftError

    name, size = _arch_of_training_checkpoint(path, obj)
    cfg = OmegaConf.create(obj["config"] if isinstance(obj.get("config"), str)
                           else (path.parent.parent / "config.yaml").read_text())
    cfg.model.checkpoint = str(path.resolve())
    model = model_from_config(cfg, Path.cwd())
    try:
        merge_peft(model)
    except PeftError as exc:
        raise ExportError(f"{path}: {exc}") from None
    return ResolvedCheckpoint(path, model.state_dict(), name, size)


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes that every key shares (a prefix on only some keys is left for the check)."""
    for prefix in WRAPPER_PREFIXES:
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def sidecar_path(weights: Path) -> Path:
    return weights.with_name(weights.name + SIDECAR_SUFFIX)


def _checkpoint_of_run(run: Path) -> Path:
    for name in ("best.pt", "last.pt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    raise ExportError(f"Run folder {run} has no checkpoints/best.pt or checkpoints/last.pt: did the run write a "
                      "checkpoint (train.checkpoint_every)? Pass a checkpoint file instead.")


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unsupported-type errors all mean "not a checkpoint"
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise ExportError(f"{path} could not be read as PyTorch weights ({type(exc).__name__}: {first_line}). "
                          "Pass a samft checkpoint or run folder.") from None


def _run_config(path: Path) -> bool:
    """Whether ``path`` sits in a samft run folder (``RUN/checkpoints/x.pt`` beside ``RUN/config.yaml``)."""
    return (path.parent.parent / "config.yaml").is_file()


def _arch_of_training_checkpoint(path: Path, obj: dict[str, Any]) -> tuple[str, int]:
    text = obj.get("config")
    if not isinstance(text, str) and (path.parent.parent / "config.yaml").is_file():
        text = (path.parent.parent / "config.yaml").read_text()
    if not isinstance(text, str):
        raise ExportError(f"{path} holds weights but no run config, so its model size is unknown. "
                          "Pass the run folder (with config.yaml) instead.")
    model_cfg = OmegaConf.create(text).get("model", {})
    name, size = model_cfg.get("name"), model_cfg.get("image_size", 1024)
    if name not in ARCHS:
        raise ExportError(f"{path}: the run config names model {name!r}, not one of {', '.join(ARCHS)}.")
    return str(name), int(size)


def _arch_of_plain_weights(path: Path, state: dict[str, torch.Tensor]) -> tuple[str, int]:
    sidecar = sidecar_path(path)
    if sidecar.is_file():  # written by export_sam for models the upstream registry cannot build
        spec = json.loads(sidecar.read_text())
        return spec["name"], int(spec["image_size"])
    name = guess_arch(strip_prefixes(state))
    # A plain state dict does not say its input size: only a released layout implies its native one.
    if name is None or not ARCHS[name].release:
        raise ExportError(f"{path} is a state dict of no known SAM size and has no {sidecar.name} beside it. "
                          "Pass the samft run folder or checkpoint it came from.")
    return name, ARCHS[name].native_image_size
