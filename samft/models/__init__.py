"""SAM models: builders, checkpoint loading, freezing, and the differentiable forward pass."""

from samft.models.build import ARCHS, build_model, checkpoint_activations, freeze, spec_of
from samft.models.checkpoint import CheckpointError, load_weights, read_state_dict
from samft.models.forward import (
    Decoded,
    best_output,
    decode_masks,
    decode_outputs,
    embed_prompts,
    output_candidates,
    preprocess,
    upscale,
)
from samft.models.peft import PeftError, apply_peft, merge_peft, parameter_counts, trainable_state

__all__ = [
    "ARCHS", "CheckpointError", "Decoded", "PeftError", "apply_peft", "best_output", "build_model",
    "checkpoint_activations", "decode_masks", "decode_outputs", "embed_prompts", "freeze", "load_weights", "merge_peft",
    "output_candidates", "parameter_counts", "preprocess", "read_state_dict", "spec_of", "trainable_state", "upscale",
]
