"""Use a fine-tuned model outside samft: resolve any samft checkpoint, export to Meta's layout and ONNX.

Names are imported on first use (PEP 562), so ``tools/export.py --help`` answers before torch loads."""

from importlib import import_module

_WHERE = {
    "check_decoder_onnx": "formats", "check_encoder_onnx": "formats", "export_decoder_onnx": "formats",
    "export_encoder_onnx": "formats", "export_sam": "formats",
    "ExportError": "checkpoints", "ResolvedCheckpoint": "checkpoints", "load_model": "checkpoints",
    "resolve": "checkpoints",
    "strip_prefixes": "checkpoints",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'samft.export' has no attribute {name!r}")
    return getattr(import_module(f"samft.export.{_WHERE[name]}"), name)
