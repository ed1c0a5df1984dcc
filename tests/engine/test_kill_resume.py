"""SIGKILL (no handler runs, no cleanup) at random points and in the middle of a checkpoint write:
the next run resumes from the newest complete checkpoint and ends exactly where an uninterrupted run
ends."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def command(demo_data, out, steps, script=None):
    return [sys.executable, str(script or REPO / "tools" / "train.py"), str(REPO / "configs" / "demo.yaml"),
            f"data.train={demo_data / 'train'}", "data.val=null", "data.num_workers=0", "data.max_masks=3",
            "model.image_size=64", "prompts.correction_clicks=1", "prompts.extra_rounds=0",
            "train.checkpoint_every=1", "train.run_name=killed", f"train.output_dir={out}", f"train.steps={steps}",
            "train.resume=auto", "tracking.enabled=false", "train.progress=false",
            "schedule={name: warmup, warmup_steps: 2, after: {name: cosine, start: 1.0, end: 0.1, total_steps: 20}}"]


def run(cmd, cwd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **kwargs)


def wait_for(predicate, proc, timeout=120, may_finish=False):
    """Poll until ``predicate()``; the process must not exit first (unless ``may_finish``: it ended)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            assert may_finish and proc.returncode == 0, proc.communicate()[1][-3000:]
            return
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def step_of(path):
    return torch.load(path, weights_only=True)["step"]


def test_sigkill_anywhere_then_resume_ends_where_an_uninterrupted_run_ends(demo_data, tmp_path):
    steps = 30
    straight = run(command(demo_data, tmp_path / "straight", steps), tmp_path)
    assert straight.wait(timeout=300) == 0, straight.communicate()[1][-3000:]
    last = tmp_path / "out" / "killed" / "checkpoints" / "last.pt"

    # 1. killed in the middle of a checkpoint write: half a temp file beside the previous complete one
    slow = run(command(demo_data, tmp_path / "out", steps, REPO / "tests" / "engine" / "slow_checkpoint_train.py"),
               tmp_path)
    wait_for(lambda: (tmp_path / "stalled").exists(), slow)
    assert list(last.parent.glob(".last.pt.*.tmp"))
    slow.send_signal(signal.SIGKILL)
    slow.wait(timeout=60)
    assert step_of(last) == 2  # the stalled 3rd write never replaced the 2nd

    # 2. killed at random moments (between steps, inside steps, inside writes); on an idle machine a
    # step takes ~0.1 s, so the delays span a few steps
    rng = random.Random(0)
    for _ in range(3):
        before = step_of(last)
        proc = run(command(demo_data, tmp_path / "out", steps), tmp_path)
        wait_for(lambda: step_of(last) > before, proc, may_finish=True)  # resumed, wrote a checkpoint
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert step_of(last) >= before + 1  # a complete checkpoint always loads

    final = run(command(demo_data, tmp_path / "out", steps), tmp_path)
    assert final.wait(timeout=300) == 0, final.communicate()[1][-3000:]
    assert not list(last.parent.glob("*.tmp"))  # the partial writes were cleaned up on resume
    a = torch.load(tmp_path / "straight" / "killed" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["step"] == b["step"] == steps
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
