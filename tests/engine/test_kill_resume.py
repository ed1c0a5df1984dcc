"""SIGKILL (no handler runs, no cleanup) at random points and in the middle of a checkpoint write:
the next run resumes from the newest complete checkpoint and ends exactly where an uninterrupted run
ends; under 2 ranks too, with torchrun and its workers killed together."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from two_ranks import TORCHRUN, kill_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SLOW = Path(__file__).with_name("slow_checkpoint_train.py")
LAUNCH_TIMEOUT = 120  # seconds; a 2-rank launch takes ~8 s on 2 cores, a hang would take forever


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


@pytest.mark.long
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
        wait_for(lambda b=before: step_of(last) > b, proc, may_finish=True)  # resumed, wrote a checkpoint
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


def two_rank_command(demo_data, out, steps, stall=None):
    """``command`` under torchrun (2 ranks); with ``stall`` (``write@K``, ``idle@K``), the slow helper."""
    _, script, *args = command(demo_data, out, steps, SLOW if stall else None)
    return [*TORCHRUN, script, *([f"--stall={stall}"] if stall else []), *args, "tracking.log_every=1"]


@pytest.fixture
def jobs():
    """The test's launches: any still running at its end (a failed assertion, a timeout) is killed."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            kill_tree(proc.pid)


@pytest.mark.long
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_sigkill_of_two_ranks_then_resume_from_the_newest_complete_checkpoint(demo_data, tmp_path, jobs):
    steps = 20
    last = tmp_path / "out" / "killed" / "checkpoints" / "last.pt"
    stalled = tmp_path / "stalled"

    def launch(stall=None):
        jobs.append(run(two_rank_command(demo_data, tmp_path / "out", steps, stall), tmp_path))
        return jobs[-1]

    def kill(proc):
        """SIGKILL the whole job (torchrun and both ranks); returns its log."""
        kill_tree(proc.pid)
        stdout, stderr = proc.communicate(timeout=30)
        stalled.unlink(missing_ok=True)
        return stdout + stderr

    def assert_resumed(log, step):
        """Rank 0 read last.pt (not a temp file) at ``step`` and the run's first step was the next one."""
        assert f"resuming from {last}" in log, log[-3000:]
        assert re.findall(r"resumed at step (\d+)", log) == [str(step)], log[-3000:]
        assert int(re.search(r"\bstep (\d+)/", log)[1]) == step + 1, log[-3000:]

    # 1. killed while rank 0 writes the checkpoint of step 3 (rank 1 waits in the barrier behind it)
    first = launch("write@3")
    wait_for(stalled.exists, first, timeout=LAUNCH_TIMEOUT)
    partial = list(last.parent.glob(".last.pt.*.tmp"))
    assert partial
    kill(first)
    assert step_of(last) == 2 and all(p.exists() for p in partial)  # the half-written 3rd never replaced it

    # 2. resumed at step 2 (the temp file is removed, never read); killed between steps 5 and 6, while
    # rank 1 waits in step 6's collectives
    second = launch("idle@5")
    wait_for(stalled.exists, second, timeout=LAUNCH_TIMEOUT)
    assert_resumed(kill(second), 2)
    assert step_of(last) == 5 and not list(last.parent.glob("*.tmp"))

    # 3. killed at a random moment once resumed and a checkpoint written (a step takes ~0.1 s: mid-step,
    # mid-write or between steps); the inode tells a replaced last.pt without polling torch.load
    third = launch()
    inode = last.stat().st_ino
    wait_for(lambda: last.stat().st_ino != inode, third, timeout=LAUNCH_TIMEOUT)
    time.sleep(random.Random(0).uniform(0.0, 0.4))
    assert_resumed(kill(third), 5)
    reached = step_of(last)  # the newest complete checkpoint
    assert 5 < reached < steps

    # 4. resumed at the newest complete checkpoint, whatever the kill interrupted; runs to the end
    final = launch()
    try:
        stdout, stderr = final.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the resumed 2-rank run did not finish within {LAUNCH_TIMEOUT} s (a hang)")
    assert final.returncode == 0, stderr[-3000:]
    assert_resumed(stdout + stderr, reached)
    state = torch.load(last, weights_only=True)
    assert state["step"] == steps and len(state["ranks"]) == 2
    assert not list(last.parent.glob("*.tmp"))
