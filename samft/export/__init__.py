"""Use a fine-tuned model outside samft: resolve any samft checkpoint, export to Meta's layout and ONNX."""

from samft.export.formats import (
    check_decoder_onnx,
    check_encoder_onnx,
    export_decoder_onnx,
    export_encoder_onnx,
    export_sam,
)
from samft.export.resolve import ExportError, ResolvedCheckpoint, load_model, resolve, strip_prefixes

__all__ = [
    "ExportError", "ResolvedCheckpoint", "check_decoder_onnx", "check_encoder_onnx", "export_decoder_onnx",
    "export_encoder_onnx", "export_sam", "load_model", "resolve", "strip_prefixes",
]
