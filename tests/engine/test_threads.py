"""The intra-op thread count: train.threads, then $OMP_NUM_THREADS, then the usable CPUs per rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samft.config import ConfigError, load
from samft.engine.threads import apply_threads, choose_threads, usable_cpus

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_setting_wins_over_environment():
    choice = choose_threads(3, environ={"OMP_NUM_THREADS": "1"}, cpus=8)
    assert (choice.threads, choice.reason) == (3, "train.threads")


def test_environment_wins_over_auto():
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "2"}, cpus=8).threads == 2


def test_auto_splits_usable_cpus_between_local_ranks():
    assert choose_threads(None, environ={}, cpus=8).threads == 8
    assert choose_threads(None, environ={"LOCAL_WORLD_SIZE": "4"}, cpus=8).threads == 2
    assert choose_threads(None, environ={"LOCAL_WORLD_SIZE": "4"}, cpus=2).threads == 1
    assert "set train.threads" in choose_threads(None, environ={}, cpus=2).describe()


def test_bad_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="train.threads=0"):
        choose_threads(0, environ={}, cpus=2)


def test_cgroup_quota_caps_the_affinity(tmp_path: Path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")  # one CPU's worth of time
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) >= 1
    assert usable_cpus(tmp_path / "absent") >= 1


def test_apply_sets_torch_threads_and_the_config_key_exists():
    before = torch.get_num_threads()
    try:
        assert apply_threads(load(CONFIGS / "demo.yaml", ["train.threads=1"]).train.threads).threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
