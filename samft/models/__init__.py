"""SAM models: builders, checkpoint loading, freezing, and the differentiable forward pass."""

from samft.models.build import ARCHS, build_model, checkpoint_activations, freeze, spec_of
from samft.models.checkpoint import CheckpointError, load_weights, read_state_dict
from samft.models.forward import (
    best_output,
    decode_masks,
    embed_prompts,
    output_candidates,
    preprocess,
    upscale,
)

__all__ = [
    "ARCHS", "CheckpointError", "best_output", "build_model", "checkpoint_activations", "decode_masks", "embed_prompts",
    "freeze", "load_weights", "output_candidates", "preprocess", "read_state_dict", "spec_of",
    "upscale",
]
