"""``python tools/export.py RUN_OR_CHECKPOINT --format sam|onnx --out PATH``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from samft.entry import run_cli

# An ONNX graph that differs from torch by more than this is reported as a failed export.
ONNX_TOLERANCE = 1e-3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/export.py", description=(
        "Export a fine-tuned SAM: 'sam' writes Meta's .pth layout (sam_model_registry[name](checkpoint=PATH) "
        "loads it); 'onnx' writes segment_anything's SamOnnxModel (prompt encoder + mask decoder) and, with "
        "--encoder, the image encoder, each checked against torch with onnxruntime."))
    p.add_argument("checkpoint", help="run folder (outputs/RUN), checkpoints/best.pt or last.pt, or a SAM .pth")
    p.add_argument("--format", choices=("sam", "onnx"), required=True)
    p.add_argument("--out", required=True, type=Path, help="output file (.pth or .onnx)")
    p.add_argument("--encoder", action="store_true", help="onnx: also export the image encoder to OUT.encoder.onnx")
    p.add_argument("--multimask", action="store_true",
                   help="onnx: return all 4 mask outputs instead of SAM's single best one (return_single_mask)")
    p.add_argument("--opset", type=int, default=17)
    return p


def _export(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from samft.export import (
        ExportError,
        check_decoder_onnx,
        check_encoder_onnx,
        export_decoder_onnx,
        export_encoder_onnx,
        export_sam,
        load_model,
        resolve,
    )
    from samft.models import ARCHS

    ckpt = resolve(args.checkpoint)
    model = load_model(args.checkpoint)
    print(f"Read {ckpt.path} ({ckpt.name}, {ckpt.image_size} px)")
    if args.format == "sam":
        written = export_sam(model, ckpt.name, args.out)
        print(f"Wrote {written[0]}")
        if len(written) > 1:
            print(f"Wrote {written[1]}: no upstream registry builds {ckpt.name} at {ckpt.image_size} px; build this "
                  f"model with samft.export.load_model('{written[0]}')")
        else:
            upstream = ARCHS[ckpt.name].upstream
            call = (upstream.format(path=written[0]) if "{path}" in upstream
                    else f"{upstream}(checkpoint='{written[0]}')")
            print(f"Load it with: {call}")
        return 0
    if ARCHS[ckpt.name].encoder == "hiera":
        raise ExportError(f"--format onnx: {ckpt.name} is SAM 2.1, whose decoder segment_anything's ONNX model "
                          "(SamOnnxModel) does not describe; export it with --format sam (sam2's layout).")
    single = not args.multimask
    export_decoder_onnx(model, args.out, return_single_mask=single, opset=args.opset)
    diffs = check_decoder_onnx(model, args.out, return_single_mask=single)
    print(f"Wrote {args.out} (inputs: image_embeddings, point_coords, point_labels, mask_input, has_mask_input, "
          f"orig_im_size); onnxruntime vs torch max abs diff: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    worst = max(diffs.values())
    if args.encoder:
        encoder_out = args.out.with_name(args.out.stem + ".encoder.onnx")
        export_encoder_onnx(model, encoder_out, opset=args.opset)
        diff = check_encoder_onnx(model, encoder_out)
        worst = max(worst, diff)
        print(f"Wrote {encoder_out} (input 'image': Sam.preprocess output [1, 3, {ckpt.image_size}, "
              f"{ckpt.image_size}]); max abs diff {diff:.2e}")
    if worst > ONNX_TOLERANCE:
        raise ExportError(f"The ONNX export of {ckpt.path} differs from torch by {worst:.3g} (> {ONNX_TOLERANCE}); "
                          f"try another --opset.")
    return 0


def export_main(argv: list[str] | None = None) -> int:
    return run_cli(_export, sys.argv[1:] if argv is None else argv)
