"""Write a fine-tuned SAM where SAM's users load models: Meta's ``.pth`` layout and ONNX.

``sam``: exactly the keys and dtypes of ``Sam.state_dict()`` (what ``sam_model_registry[name]`` loads
strictly; for ``vit_t`` MobileSAM's ``mobile_sam.pt`` layout, which MobileSAM's own ``sam_model_registry
["vit_t"]`` loads; for SAM 2.1 ``{"model": state_dict}``, the ``sam2.1_hiera_*.pt`` layout that sam2's
``build_sam2(config, ckpt_path=...)`` loads). Models no upstream registry builds (``vit_tiny``, other
input sizes) get a sidecar JSON with the builder arguments; ``samft.export.load_model(PATH)`` reads both.

``onnx``: segment_anything's own ``SamOnnxModel`` (prompt encoder + mask decoder, the web demo's inputs
and outputs), optionally the image encoder, each checked against torch with onnxruntime.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

from samft.export.checkpoints import ExportError, sidecar_path
from samft.models import ARCHS

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


def export_sam(model: Sam, name: str, out: str | Path) -> list[Path]:
    """Save ``model``'s weights in Meta's layout (float32, no prefixes, no training state).

    Args:
        name: the samft model name (``vit_b`` ... ``vit_tiny``).

    Returns:
        the files written: the weights and, for models the upstream registry cannot build, the sidecar.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The model's own state dict is the reference layout; .float() undoes half-precision copies.
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    # SAM 2.1's release wraps its state dict: {"model": state_dict} (what sam2's build_sam2 reads).
    torch.save({"model": state} if ARCHS[name].encoder == "hiera" else state, out)
    image_size = model.image_encoder.img_size
    if ARCHS[name].release and ARCHS[name].native_image_size == image_size:  # the upstream builder fits it
        return [out]
    sidecar = sidecar_path(out)
    sidecar.write_text(json.dumps({
        "name": name, "image_size": image_size, "builder": "samft.models.build_model",
        "note": (f"The upstream builders (segment_anything's registry, MobileSAM's, sam2's configs) build only the "
                 f"released models at 1024 px. Build it with "
                 f"samft.models.build_model({name!r}, {image_size}).load_state_dict(torch.load(weights)) "
                 "or samft.export.load_model(weights)."),
    }, indent=2))
    return [out, sidecar]


def embedding_channels(model: Sam) -> int:
    """Channels of the image encoder's output: SAM's embedding, plus the early ViT feature for HQ-SAM."""
    hq_fusion = getattr(model.mask_decoder, "compress_vit_feat", None)
    return model.prompt_encoder.embed_dim + (hq_fusion[0].in_channels if hq_fusion is not None else 0)


def decoder_dummy_inputs(model: Sam, num_points: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of ``SamOnnxModel`` for one image, as segment_anything's export script makes them."""
    g = torch.Generator().manual_seed(seed)
    size = model.image_encoder.img_size
    h, w = model.prompt_encoder.image_embedding_size
    return {
        "image_embeddings": torch.randn(1, embedding_channels(model), h, w, generator=g),
        "point_coords": torch.randint(0, size, (1, num_points, 2), generator=g).float(),
        "point_labels": torch.randint(-1, 4, (1, num_points), generator=g).float(),
        "mask_input": torch.randn(1, 1, 4 * h, 4 * w, generator=g),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([size * 3 // 4, size], dtype=torch.float32),
    }


def export_decoder_onnx(model: Sam, out: str | Path, *, return_single_mask: bool = True, opset: int = 17) -> Path:
    """Export prompt encoder + mask decoder with segment_anything's ``SamOnnxModel`` (its web demo's graph)."""
    wrapper = SamOnnxModel(model.cpu().eval(), return_single_mask=return_single_mask)
    dummy = decoder_dummy_inputs(model)
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    _onnx_export(wrapper, tuple(dummy.values()), out, list(DECODER_INPUTS), list(DECODER_OUTPUTS), dynamic, opset)
    return Path(out)


class _ImageEncoder(torch.nn.Module):
    """Image encoder on ``Sam.preprocess``'s output: ``[1, 3, S, S]`` normalised, padded -> embedding."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


def export_encoder_onnx(model: Sam, out: str | Path, *, opset: int = 17) -> Path:
    """Export the image encoder (input ``image`` as ``Sam.preprocess`` returns it, output ``image_embeddings``)."""
    size = model.image_encoder.img_size
    dummy = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    _onnx_export(_ImageEncoder(model.cpu().eval()), (dummy,), out, ["image"], ["image_embeddings"], None, opset)
    return Path(out)


def _onnx_export(module, args, out, input_names, output_names, dynamic_axes, opset) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about traced python ints in SAM's code; they are constants here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(out), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
                          export_params=True, dynamo=False)


def check_decoder_onnx(model: Sam, path: str | Path, *, return_single_mask: bool = True,
                       num_points: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Run the exported decoder with onnxruntime and torch on the same random inputs.

    Returns:
        max abs difference per output (``masks``, ``iou_predictions``, ``low_res_masks``) over all trials.
    """
    session = _session(path)
    wrapper = SamOnnxModel(model.cpu().eval(), return_single_mask=return_single_mask)
    diffs = dict.fromkeys(DECODER_OUTPUTS, 0.0)
    for trial, n in enumerate(num_points):
        inputs = decoder_dummy_inputs(model, num_points=n, seed=trial + 1)
        with torch.no_grad():
            expected = wrapper(*inputs.values())
        got = session.run(list(DECODER_OUTPUTS), {k: v.numpy() for k, v in inputs.items()})
        for key, ref, out in zip(DECODER_OUTPUTS, expected, got):
            diffs[key] = max(diffs[key], float(np.abs(ref.numpy() - out).max()))
    return diffs


def check_encoder_onnx(model: Sam, path: str | Path) -> float:
    """Max abs difference of the exported image encoder's embedding against torch on a random image."""
    size = model.image_encoder.img_size
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.cpu().eval().image_encoder(image).numpy()
    got = _session(path).run(["image_embeddings"], {"image": image.numpy()})[0]
    return float(np.abs(expected - got).max())


def _session(path: str | Path):
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("The ONNX check needs onnxruntime: pip install 'samft[export]'.") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # share the cores as torch was told to
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
