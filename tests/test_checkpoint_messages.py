"""Checkpoint errors say what to do, and never relay PyTorch's advice to load with weights_only=False."""

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from samft.engine.checkpoint import load_checkpoint
from samft.models import CheckpointError, build_model
from samft.models.checkpoint import load_weights, read_state_dict


class Payload:
    """Stands for any object a pickle can carry (and run code when unpickled)."""


def _pickled_object(path: Path) -> Path:
    torch.save({"model": OrderedDict(w=torch.zeros(1)), "extra": Payload()}, path)
    return path


@pytest.mark.parametrize("reader", [read_state_dict, load_checkpoint])
def test_unsafe_checkpoint_message_gives_no_weights_only_false_advice(tmp_path: Path, reader):
    path = _pickled_object(tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError) as err:
        reader(path)
    message = str(err.value)
    assert "weights_only" not in message.replace("weights_only=True", "")  # nothing about turning it off
    assert "\x1b[" not in message and "\n" not in message
    assert str(path) in message and "never runs code" in message and "Payload" in message


def test_truncated_checkpoint_is_one_clear_line(tmp_path: Path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"could not be read.*truncated.*copy or download it again"):
        load_checkpoint(tmp_path / "cut.pt")


def test_size_mismatch_hint_names_the_checkpoints_image_size(tmp_path: Path):
    # The demo trains vit_tiny at 128 px; evaluating it at another size must say which size fits.
    torch.save({"model": build_model("vit_tiny", 128).state_dict()}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError) as err:
        load_weights(build_model("vit_tiny", 64), tmp_path / "best.pt", "vit_tiny")
    assert "set model.name=vit_tiny model.image_size=128" in str(err.value)
    load_weights(build_model("vit_tiny", 128), tmp_path / "best.pt", "vit_tiny")  # following it works
