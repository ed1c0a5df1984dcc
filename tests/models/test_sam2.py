"""SAM 2.1 (``sam2_1_hiera_*``) through the sam2 package: samft's forward against sam2's own image path
(``SAM2Base._forward_sam_heads`` and ``SAM2ImagePredictor``) on the same weights, the released
``{"model": state_dict}`` layout loaded by sam2's own ``build_sam2(ckpt_path=...)``, and the engine
(training, exact resume, embedding cache, bf16 autocast) on Hiera-T at small inputs."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sam2", reason="SAM 2.1 models need the sam2 package (make setup-sam2)")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # hydra's notes about omegaconf 2.4's renamed resolver API
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

from samft.archs import ARCHS  # noqa: E402
from samft.config import load  # noqa: E402
from samft.models import build_model, decode_outputs, freeze, load_weights, preprocess, spec_of  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NAME, SIZE = "sam2_1_hiera_t", 256


def reference(path: Path, size: int = SIZE) -> torch.nn.Module:
    """sam2's own SAM2Base from a checkpoint file, as its users build it (strict load, eval mode)."""
    return build_sam2(ARCHS[NAME].sam2_config, ckpt_path=str(path), device="cpu", mode="eval",
                      apply_postprocessing=False, hydra_overrides_extra=[f"++model.image_size={size}"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """samft's Hiera-T at 256 px with every weight moved off its initialisation, and sam2's model loaded
    from those weights in the release layout."""
    torch.manual_seed(0)
    ours = build_model(NAME, SIZE).eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": ours.state_dict()}, path)
    return ours, reference(path), path


def image_pair():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    return images, torch.ones(2, SIZE, SIZE, dtype=torch.bool)


def reference_features(model, normalised: torch.Tensor):
    """What SAM2ImagePredictor.set_image keeps: the S/16 feature + no_mem_embed and the high-res features."""
    out = model.forward_image(normalised)
    _, feats, _, sizes = model._prepare_backbone_features(out)
    feats[-1] = feats[-1] + model.no_mem_embed
    maps = [f.permute(1, 2, 0).reshape(normalised.shape[0], -1, *s) for f, s in zip(feats, sizes)]
    return maps[-1], maps[:-1]


@pytest.mark.parametrize("case", ["single_clicks", "box", "clicks_and_mask"])
def test_forward_equals_sam2s_forward_sam_heads(pair, case):
    ours, ref, _ = pair
    images, valid = image_pair()
    x = preprocess(ours, images, valid)
    g = torch.Generator().manual_seed(2)
    if case == "single_clicks":  # ambiguous: SAM 2 returns its three multimask outputs
        points, labels, multimask = torch.rand(3, 1, 2, generator=g) * SIZE, torch.ones(3, 1, dtype=torch.long), True
    elif case == "box":
        points, labels = torch.tensor([[[20.0, 30.0], [200.0, 150.0]]] * 3), torch.tensor([[2, 3]] * 3)
        multimask = False
    else:
        points = torch.rand(3, 3, 2, generator=g) * SIZE
        labels, multimask = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1]]), False
    image_index = torch.tensor([0, 1, 1])
    mask_inputs = torch.randn(3, 1, SIZE // 4, SIZE // 4, generator=g) * 5 if case == "clicks_and_mask" else None
    with torch.no_grad():
        decoded = decode_outputs(ours, ours.image_encoder(x), image_index, points, labels, mask_inputs)
        embedding, high_res = reference_features(ref, x)
        theirs = ref._forward_sam_heads(
            embedding[image_index], point_inputs={"point_coords": points, "point_labels": labels},
            mask_inputs=mask_inputs, high_res_features=[f[image_index] for f in high_res], multimask_output=multimask)
    outputs = slice(1, 4) if multimask else slice(0, 1)
    low_res, ious, object_score = theirs[0], theirs[2], theirs[6]
    torch.testing.assert_close(decoded.masks[:, outputs], low_res, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(decoded.iou_pred[:, outputs], ious, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decoded.object_score, object_score[:, 0], atol=1e-5, rtol=1e-5)
    assert decoded.masks.shape == (3, 4, SIZE // 4, SIZE // 4)


@pytest.fixture
def objects_present(pair):
    """The pair with the object-score head's bias raised by 10 in both (restored after the test): the
    predictor returns the decoder's masks as they are, _forward_sam_heads blanks absent objects."""
    heads = [model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias for model in pair[:2]]
    saved = [bias.detach().clone() for bias in heads]
    with torch.no_grad():
        for bias in heads:
            bias.add_(10.0)
    yield pair
    with torch.no_grad():
        for bias, value in zip(heads, saved):
            bias.copy_(value)


def test_forward_equals_sam2_image_predictor(objects_present):
    """One image, one click and one box through SAM2ImagePredictor (its own resize and normalisation)."""
    ours, ref, _ = objects_present
    images, valid = image_pair()
    predictor = SAM2ImagePredictor(ref)
    # The predictor hard-codes its feature sizes for 1024 px input; these are the same levels at 256 px.
    predictor._bb_feat_sizes = [(SIZE // 4, SIZE // 4), (SIZE // 8, SIZE // 8), (SIZE // 16, SIZE // 16)]
    predictor.set_image(images[0].permute(1, 2, 0).numpy())
    with torch.no_grad():
        embedding = ours.image_encoder(preprocess(ours, images[:1], valid[:1]))
    for points, labels, box, multimask in (([[60.0, 90.0]], [1], None, True),
                                           (None, None, [30.0, 40.0, 180.0, 220.0], False)):
        _, iou, low_res = predictor.predict(
            point_coords=None if points is None else np.array(points), point_labels=None if labels is None else
            np.array(labels), box=None if box is None else np.array(box), multimask_output=multimask,
            return_logits=True)
        prompt = torch.tensor([points] if points is not None else [[box[:2], box[2:]]])
        prompt_labels = torch.tensor([labels] if labels is not None else [[2, 3]])
        with torch.no_grad():
            decoded = decode_outputs(ours, embedding, torch.zeros(1, dtype=torch.long), prompt, prompt_labels)
        outputs = slice(1, 4) if multimask else slice(0, 1)
        assert bool((decoded.object_score > 0).all())
        torch.testing.assert_close(decoded.masks[0, outputs], torch.from_numpy(low_res), atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(decoded.iou_pred[0, outputs], torch.from_numpy(iou), atol=1e-4, rtol=1e-4)


def test_a_stretched_real_photo_equals_sam2_image_predictor_on_the_original(objects_present, shared_dir):
    """The consumer round trip on a non-square COCO photo: samft serves it in SAM 2.1's frame (stretched to
    the square) and its forward equals SAM2ImagePredictor.set_image on the original photo + predict with the
    boxes mapped back to the original frame (the predictor's own resize and coordinate transform). Served
    in SAM's padded frame, the same model gives other masks: the train/deploy mismatch of issue #15."""
    from PIL import Image

    from samft.archs import input_frame
    from samft.data.coco import CocoDataset

    ours, ref, _ = objects_present
    tiny = shared_dir / "data" / "coco_tiny"
    if not tiny.is_dir():
        pytest.skip(f"{tiny} is absent: real-COCO test skipped")
    predictor = SAM2ImagePredictor(ref)
    predictor._bb_feat_sizes = [(SIZE // 4, SIZE // 4), (SIZE // 8, SIZE // 8), (SIZE // 16, SIZE // 16)]
    assert input_frame(NAME) == "square"
    errors = {}
    for frame in ("square", "longest_side"):
        ds = CocoDataset(tiny / "annotations" / "instances_val2017.json", tiny / "val2017", image_size=SIZE,
                         input_frame=frame, prompt="box", box_noise=0.0, max_masks=3)
        index = next(i for i, r in enumerate(ds.records) if r["n"] and r["width"] > r["height"])
        item = ds[index]
        H, W = item["meta"]["original_size"]
        predictor.set_image(np.array(Image.open(tiny / "val2017" / Path(item["meta"]["file"]).name).convert("RGB")))
        with torch.no_grad():
            embedding = ours.image_encoder(preprocess(ours, item["image"][None], item["valid"][None]))
        # served -> original pixels: the inverse of the predictor's x * S / W, y * S / H (the frame's scale)
        to_original = torch.tensor([W / SIZE, H / SIZE] if frame == "square" else [max(H, W) / SIZE] * 2)
        for box in item["points"]:
            _, iou, low_res = predictor.predict(box=(box * to_original).flatten().numpy(), multimask_output=False,
                                                return_logits=True)
            with torch.no_grad():
                decoded = decode_outputs(ours, embedding, torch.zeros(1, dtype=torch.long), box[None],
                                         torch.tensor([[2, 3]]))
            diff = (decoded.masks[0, :1] - torch.from_numpy(low_res)).abs()
            errors.setdefault(frame, []).append((diff.mean().item(), diff.max().item()))
            if frame == "square":  # the images differ only by the resize kernel (OpenCV area vs antialiased bilinear)
                assert diff.mean() < 0.02 and diff.max() < 0.15, diff
                torch.testing.assert_close(decoded.iou_pred[0, :1], torch.from_numpy(iou), atol=2e-3, rtol=0)
    # the padded frame: logits of magnitude ~0.2 off by ~0.1 on average (the predictor saw another image)
    assert min(mean for mean, _ in errors["longest_side"]) > 5 * max(mean for mean, _ in errors["square"]), errors


def test_release_layout_loads_strictly_both_ways(pair, tmp_path):
    """samft loads sam2's checkpoint layout strictly, and export writes it back for build_sam2."""
    from samft.export.formats import export_sam
    from samft.models.checkpoint import CheckpointError

    ours, ref, path = pair
    fresh = build_model(NAME, SIZE)
    load_weights(fresh, path, NAME)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ref.state_dict().items())
    assert len(ref.state_dict()) == len(fresh.state_dict()) == 471
    assert any(k.startswith("memory_attention.") for k in fresh.state_dict())  # video parts kept for the release
    files = export_sam(fresh, NAME, tmp_path / "out" / "sam2.1_hiera_tiny_ft.pt")
    assert len(files) == 2  # 256 px: the sidecar says how to build it
    again = reference(files[0])  # sam2's own strict loader
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())
    native = export_sam(build_model(NAME, 1024), NAME, tmp_path / "out" / "native.pt")
    assert native == [tmp_path / "out" / "native.pt"]  # build_sam2's own config fits: no sidecar
    assert set(torch.load(native[0], weights_only=True)) == {"model"}
    from samft.export import load_model

    loaded = load_model(native[0])  # a release file: recognised as Hiera-T at its native 1024 px by its keys
    assert loaded.samft_model_name == NAME and loaded.image_size == 1024
    state = dict(ours.state_dict())
    state.pop("no_mem_embed")
    torch.save({"model": state}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="1 keys missing.*no_mem_embed"):
        load_weights(build_model(NAME, SIZE), tmp_path / "partial.pt", NAME)


def test_sizes_in_archs_are_the_packaged_configs():
    """ARCHS (torch-free, read by config validation) against sam2's own configs/sam2.1/*.yaml and Hiera's defaults."""
    import inspect

    import sam2
    from omegaconf import OmegaConf
    from sam2.modeling.backbones.hieradet import Hiera

    defaults = {k: v.default for k, v in inspect.signature(Hiera).parameters.items()}
    hiera = [name for name, arch in ARCHS.items() if arch.encoder == "hiera"]
    assert len(hiera) == 4
    for name in hiera:
        arch = ARCHS[name]
        trunk = OmegaConf.load(Path(sam2.__file__).parent / arch.sam2_config).model.image_encoder.trunk
        size = {k: trunk.get(k, defaults[k]) for k in ("embed_dim", "num_heads", "stages", "global_att_blocks")}
        assert (arch.embed_dim, arch.num_heads, arch.depth, arch.global_attn_indexes) == (
            size["embed_dim"], size["num_heads"], sum(size["stages"]), tuple(size["global_att_blocks"])), name
    trunk = build_model(NAME, 64).image_encoder.trunk
    assert len(trunk.blocks) == ARCHS[NAME].depth
    assert tuple(i for i, b in enumerate(trunk.blocks) if b.window_size == 0) == ARCHS[NAME].global_attn_indexes


def test_freezing_layer_decay_and_peft_targets():
    model = build_model(NAME, 64)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("image_encoder.", "sam_", "no_mem_embed")) for n in trainable)
    freeze(model, image_encoder=True)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert model.sam_mask_decoder.conv_s0.weight.requires_grad  # the high-res convs belong to the decoder
    import fnmatch

    spec = spec_of(model)
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and any(fnmatch.fnmatchcase(n, p) for p in spec.peft_targets)]
    assert len(targets) == len(spec.encoder_blocks(model)) == 12 and "image_encoder.trunk.blocks.0.attn.qkv" in targets
    layer = spec.decay_layer
    assert layer(model, "trunk.patch_embed.proj.weight") == (0, 12)
    assert layer(model, "trunk.pos_embed") == (0, 12)
    assert layer(model, "trunk.blocks.5.attn.qkv.weight") == (6, 12)
    assert layer(model, "neck.convs.0.conv.weight") == (13, 12)
    from samft.models import apply_peft

    lora = build_model(NAME, 64)
    apply_peft(lora, {"name": "lora", "rank": 2})
    adapted = {n for n, p in lora.named_parameters() if p.requires_grad and ".lora." in n}
    assert adapted and all(".attn.qkv.lora." in n and n.startswith("image_encoder.trunk.blocks.") for n in adapted)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # LoRA starts at zero: the same embedding as the base model's
        base = build_model(NAME, 64)
        base.load_state_dict({k: v for k, v in lora.state_dict().items() if ".lora." not in k})
        torch.testing.assert_close(lora.image_encoder(x), base.image_encoder(x))


def test_activation_checkpointing_keeps_gradients():
    from samft.models import checkpoint_activations

    torch.manual_seed(0)
    plain, ckpt = build_model(NAME, 64), build_model(NAME, 64)
    ckpt.load_state_dict(plain.state_dict())
    checkpoint_activations(ckpt)
    x = torch.randn(1, 3, 64, 64)
    for model in (plain, ckpt):
        model.image_encoder(x).square().mean().backward()
    for (name, p), q in zip(plain.image_encoder.named_parameters(), ckpt.image_encoder.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


# -- the engine ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> Path:
    from samft.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("two")
    make_demo_dataset(root, train_images=2, val_images=1, size=(160, 120), seed=0)
    return root


def sam2_config(data, root, *overrides):
    # 64 px, 4 masks, SAM 2's recipe with one correction click: ~1 s a step on one CPU thread.
    return load(REPO / "configs" / "sam2_hiera_s_ft.yaml", [
        f"data.train={data / 'train'}", "data.val=null", "data.num_workers=0", "data.max_masks=4",
        "data.batch_size=2", f"model.name={NAME}", "model.image_size=64", "prompts.correction_clicks=1",
        "schedule={name: warmup, warmup_steps: 1, after: {name: constant, value: 1.0}}",
        "optim.lr=1e-3", "optim.encoder_lr=1e-4", "optim.grad_clip=null", "train.progress=false",
        "tracking.enabled=false", "tracking.log_every=2", f"train.output_dir={root / 'out'}", "train.threads=1",
        *overrides])


def test_sam2_learns_with_its_recipe_and_exports_for_build_sam2(two_images, tmp_path, capsys):
    from samft.engine.trainer import Trainer
    from samft.export.cli import export_main

    result = Trainer(sam2_config(two_images, tmp_path, "train.steps=12")).fit()
    first, last = result.history[0], result.history[-1]
    assert {"loss/focal", "loss/dice", "loss/iou", "loss/object_score"} <= set(first)
    assert last["weight/object_score"] == 1.0 and last["weight/focal"] == 20.0
    losses = [r["loss/total"] for r in result.history]
    assert sum(losses[-2:]) / 2 < 0.6 * sum(losses[:2]) / 2, losses
    # tools/export.py --format sam on the run: the release layout, loaded strictly by sam2's own builder.
    assert export_main([str(result.run_dir), "--format", "sam", "--out", str(tmp_path / "ft.pt")]) == 0
    trained = torch.load(result.checkpoint, weights_only=True)["model"]
    exported = reference(tmp_path / "ft.pt", size=64).state_dict()
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
    assert export_main([str(result.run_dir), "--format", "onnx", "--out", str(tmp_path / "ft.onnx")]) == 2
    assert "error: --format onnx: sam2_1_hiera_t is SAM 2.1" in capsys.readouterr().err


def test_the_config_serves_sam2_stretched_and_sam_padded(two_images, tmp_path):
    """``model.name`` picks the frame the datasets serve (the demo photos are 160 x 120)."""
    from samft.engine.build import dataset_from_config

    cfg = sam2_config(two_images, tmp_path)
    for train in (True, False):
        item = dataset_from_config(cfg, REPO, cfg.data.train, seed=0, train=train)[0]
        assert item["meta"]["input_size"] == (64, 64) and bool(item["valid"].all())
    assert {name for name, arch in ARCHS.items() if arch.input_frame == "square"} == {
        name for name in ARCHS if name.startswith("sam2_1_")}
    assert {arch.input_frame for arch in ARCHS.values()} == {"square", "longest_side"}


def test_sam2_resumes_exactly(two_images, tmp_path):
    from samft.engine.trainer import Trainer

    """1 step, stop, resume to 2 == 2 uninterrupted steps (clicks, AdamW state and lr schedule included)."""
    straight = Trainer(sam2_config(two_images, tmp_path, "train.steps=2", "train.run_name=straight")).fit()
    Trainer(sam2_config(two_images, tmp_path, "train.steps=1", "train.run_name=split")).fit()
    resumed = Trainer(sam2_config(two_images, tmp_path, "train.steps=2", "train.run_name=split",
                                  "train.resume=auto")).fit()
    a, b = (torch.load(r.checkpoint, weights_only=True)["model"] for r in (straight, resumed))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_frozen_encoder_with_the_embedding_cache_and_bf16_autocast(two_images, tmp_path):
    from samft.engine.trainer import Trainer

    trainer = Trainer(sam2_config(two_images, tmp_path, "train.steps=3", "model.freeze_image_encoder=true",
                                  f"model.embedding_cache={tmp_path / 'emb'}", "train.precision=bf16"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith("image_encoder.") or k.startswith("memory_") for k in changed)
    assert any(k.startswith("sam_mask_decoder.conv_s0.") for k in changed)
    assert all(np.isfinite(r["loss/total"]) for r in result.history)
    cached = list((tmp_path / "emb").rglob("*.pt"))
    assert len(cached) == 2 and torch.load(cached[0], weights_only=True).shape == (256 * 21, 4, 4)


def test_segment_anything_tools_refuse_sam2_in_one_line(pair):
    from samft.amg import AutomaticMaskGenerator
    from samft.models.build import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="cannot run sam2_1_hiera_t .*SAM2AutomaticMaskGenerator"):
        AutomaticMaskGenerator(pair[0])


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_ranks_train_sam2_in_step(demo_data, tmp_path):
    """torchrun, 2 gloo ranks (tests/engine/ddp_run.py): SAM 2's loss, validation, identical weights (~40 s)."""
    import os
    import subprocess
    import sys

    engine_tests = REPO / "tests" / "engine"
    sys.path.insert(0, str(engine_tests))
    from two_ranks import TORCHRUN, kill_tree

    cmd = [*TORCHRUN, str(engine_tests / "ddp_run.py"), str(demo_data), str(tmp_path), "none", "train.steps=4",
           f"model.name={NAME}", "loss={name: sam2}",
           "weighting={name: fixed, weights: {focal: 20.0, dice: 1.0, iou: 1.0, object_score: 1.0}}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        pytest.fail("2-rank SAM 2.1 run did not finish within 300 s (a hang)")
    assert proc.returncode == 0, stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["step"] == r1["step"] == 4 and r0["val_metrics"] == r1["val_metrics"]
    assert "loss/object_score" in r0["history"][0]
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
