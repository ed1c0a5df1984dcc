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


def test_a_rank_makes_its_own_gpu_current_before_it_joins_the_group(monkeypatch):
    """On CUDA, rank LOCAL_RANK's device is set current first: NCCL's setup must not touch cuda:0."""
    from samft.engine import distributed as dist

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.distributed, "new_group", lambda backend: calls.append(("new_group", backend)))
    device = dist.init(torch.device("cuda"), dist.DistInfo(rank=5, world_size=8, local_rank=1))
    assert device == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl"), ("new_group", "gloo")]


def test_a_cpu_rank_joins_a_gloo_group_and_needs_no_second_one(monkeypatch):
    from samft.engine import distributed as dist

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("no GPU here"))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(torch.distributed, "new_group", lambda backend: pytest.fail("gloo serves both"))
    assert dist.init(torch.device("cpu"), dist.DistInfo(1, 2, 1)) == torch.device("cpu")
    assert calls == ["gloo"]
