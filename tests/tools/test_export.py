"""tools/export_sam.py: a samft training checkpoint -> the model's plain state dict."""

from pathlib import Path

import torch

from samft.cli import export_main
from samft.models import build_model
from samft.models.checkpoint import load_weights


def test_export_writes_loadable_model_weights(tmp_path: Path, capsys):
    torch.manual_seed(0)
    model = build_model("vit_tiny", image_size=64)
    training_state = {"model": model.state_dict(), "step": 4, "optimizer": {"state": {}}}
    torch.save(training_state, tmp_path / "best.pt")

    assert export_main([str(tmp_path / "best.pt"), str(tmp_path / "out" / "sam.pth")]) == 0
    exported = torch.load(tmp_path / "out" / "sam.pth", weights_only=True)
    assert set(exported) == set(model.state_dict())  # weights only: no step, no optimiser
    fresh = build_model("vit_tiny", image_size=64)
    load_weights(fresh, tmp_path / "out" / "sam.pth", "vit_tiny")
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert "model weights only" in capsys.readouterr().out


def test_export_of_missing_checkpoint_is_one_line(tmp_path: Path, capsys):
    assert export_main([str(tmp_path / "absent.pt"), str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Checkpoint") and "Traceback" not in err
