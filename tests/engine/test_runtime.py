"""Precision and device choices that must be right on GPUs this machine does not have."""

import pytest
import torch

from samft.engine import runtime


@pytest.mark.parametrize(("capability", "expected"), [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"),
                                                      ((9, 0), "bf16")])
def test_auto_precision_picks_bf16_only_where_the_hardware_has_it(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16 slowly: is_bf16_supported() says yes, samft says fp32."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: pytest.fail("emulation counts here"))
    device = torch.device("cuda", 1)
    assert runtime.resolve_precision("auto", device) == expected
    assert asked == [device]  # asked about this rank's device, not the current one (cuda:0)


def test_an_explicit_cuda_index_becomes_the_current_device(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert runtime.select_device("cuda:1") == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]


def test_the_rank_device_is_chosen_before_precision(monkeypatch):
    """Under torchrun, joining the process group picks cuda:LOCAL_RANK first; precision is resolved on it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = []
    monkeypatch.setattr(runtime, "resolve_precision", lambda requested, device: seen.append(device) or "fp32")
    made = runtime.make_runtime("auto", "auto", dist_init=lambda device: torch.device("cuda", 3))
    assert made.device == torch.device("cuda", 3) and seen == [torch.device("cuda", 3)]
