"""Two gloo ranks on the CPU (the code path NCCL takes on GPUs): every run must finish, never hang.

Each run is a torchrun launch of ddp_run.py under a timeout that fails the test instead of hanging it.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from two_ranks import TORCHRUN, kill_tree  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

HELPER = Path(__file__).with_name("ddp_run.py")
TIMEOUT = 300  # seconds; a run here takes ~10-40 s on 2 cores, a hang would take forever


def torchrun(data, out, fault="none", *overrides, expect=0):
    """Launch 2 ranks; returns (rank 0 result, rank 1 result, stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*TORCHRUN, str(HELPER), str(data), str(out), fault, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(f"2-rank run did not finish within {TIMEOUT} s (a hang):\n{stderr[-3000:]}")
    assert proc.returncode == expect, stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return ranks[0], ranks[1], stderr


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_validation_and_best_checkpoints_under_two_ranks(demo_data, tmp_path):
    """The first validation used to hang: rank 0 waited in save()'s barrier, rank 1 in the next step."""
    r0, r1, _ = torchrun(demo_data, tmp_path, "none", "train.steps=4")
    assert r0["step"] == r1["step"] == 4
    assert r0["val_metrics"] == r1["val_metrics"]  # every rank scored its share, all hold the mean
    assert r0["val_metrics"]["val/num_masks"] == 8  # 4 images x 2 masks, split over the ranks
    assert_same(r0["model"], r1["model"])
    best = torch.load(Path(r0["run_dir"]) / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] in (2, 4) and len(best["ranks"]) == 2
    assert best["ranks"][0]["rng"]["generators"][0].ne(best["ranks"][1]["rng"]["generators"][0]).any()


def test_a_nan_on_one_rank_skips_the_step_on_both(demo_data, tmp_path):
    # Rank 1's 4th loss call is in its 2nd step (3 rounds per step): that step is skipped everywhere.
    r0, r1, stderr = torchrun(demo_data, tmp_path, "nan@4", "train.steps=3", "data.val=null")
    assert r0["step"] == r1["step"] == 3
    assert "step skipped on every rank" in stderr
    assert_same(r0["model"], r1["model"])


def test_too_many_nonfinite_steps_on_one_rank_stop_every_rank(demo_data, tmp_path):
    """Rank 1's loss is NaN at every call: both ranks count the same skipped steps and both stop."""
    r0, r1, _ = torchrun(demo_data, tmp_path, "nan@*", "train.steps=10", "data.val=null",
                         "train.max_nonfinite_steps=2", expect=1)
    assert r0["nonfinite_in_row"] == r1["nonfinite_in_row"] == 2
    assert "2 non-finite losses in a row" in r0["error"] and "2 non-finite losses in a row" in r1["error"]


def test_ranks_take_rank_0s_run_folder_whatever_their_clocks_say(demo_data, tmp_path):
    """Without train.run_name the folder is a timestamp: rank 1's clock differs, rank 0's name wins."""
    r0, r1, _ = torchrun(demo_data, tmp_path, "clock", "train.steps=2", "data.val=null", "train.run_name=null")
    assert r0["run_dir"] == r1["run_dir"]
    assert Path(r0["run_dir"]).name != "19700101-000000"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [Path(r0["run_dir"]).name]


def test_logged_values_are_reduced_over_ranks(demo_data, tmp_path):
    """Every rank logs the same record: mask counts summed over ranks, losses averaged."""
    r0, r1, _ = torchrun(demo_data, tmp_path, "none", "train.steps=3", "data.val=null", "tracking.log_every=1")
    def reduced(history):  # images/s is each rank's own clock (rank 0's is logged)
        return [{k: v for k, v in record.items() if k != "images_per_s"} for record in history]

    assert len(r0["history"]) == 3 and reduced(r0["history"]) == reduced(r1["history"])
    # One image per rank and step, at most data.max_masks=3 masks each: more than 3 is a sum over ranks.
    assert all(3 < record["masks"] <= 6 for record in r0["history"])


def test_sigterm_on_one_rank_stops_both_with_a_checkpoint(demo_data, tmp_path):
    # torchrun itself exits 1 when its children exit non-zero (each rank exits 143 = 128 + SIGTERM).
    r0, r1, stderr = torchrun(demo_data, tmp_path, "sigterm@4", "train.steps=50", "data.val=null", expect=1)
    assert f"exitcode  : {128 + signal.SIGTERM}" in stderr
    assert r0["stopped_by"] == r1["stopped_by"] == "SIGTERM"
    assert r0["step"] == r1["step"] == 2  # the step in which the signal came is finished first
    assert "ddp_run.py\", line" not in stderr  # no traceback from the ranks themselves
    state = torch.load(Path(r0["run_dir"]) / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2


def test_round_loss_last_with_unused_parameters(demo_data, tmp_path):
    # Only the last round is trained: no_mask_embed (round 0 only) gets no gradient.
    r0, r1, _ = torchrun(demo_data, tmp_path, "none", "train.steps=3", "data.val=null", "prompts.round_loss=last")
    assert r0["step"] == r1["step"] == 3
    assert_same(r0["model"], r1["model"])


def test_decoder_checkpointing_under_two_ranks_is_exact(demo_data, tmp_path):
    """Recomputing the decoder per round (and the encoder blocks) under DDP, which looks for unused
    parameters every step (round_loss=last leaves no_mask_embed without gradient): both ranks end on
    the weights of the same run without checkpointing, bit for bit."""
    common = ["train.steps=2", "data.val=null", "prompts.round_loss=last"]
    plain, _, _ = torchrun(demo_data, tmp_path / "plain", "none", *common)
    r0, r1, _ = torchrun(demo_data, tmp_path / "recomputed", "none", *common, "model.decoder_checkpointing=true",
                         "model.activation_checkpointing=true")
    assert r0["step"] == r1["step"] == 2
    assert_same(r0["model"], r1["model"])
    assert_same(r0["model"], plain["model"])


def test_dwa_weights_agree_across_ranks(demo_data, tmp_path):
    # 12 images over 2 ranks with 2 per batch: 3 steps per epoch; DWA adapts after 2 epochs.
    r0, r1, _ = torchrun(demo_data, tmp_path, "none", "train.steps=10", "data.val=null", "data.batch_size=2",
                         "weighting={name: dwa}")
    assert int(r0["weighting"]["epochs_seen"]) == 3
    assert_same(r0["weighting"], r1["weighting"])
    assert not torch.equal(r0["weighting"]["history"][0], r0["weighting"]["history"][1])


def test_resume_without_a_shared_folder_is_exact(demo_data, tmp_path):
    """N + N == 2N under 2 ranks, resumed at an epoch boundary (12 images / 2 ranks = 6 steps), each
    rank with its own output folder as on nodes without a shared filesystem: rank 0 reads the
    checkpoint and hands it to rank 1, whose folder stays empty."""
    common = ["data.val=null", "train.checkpoint_every=3"]
    straight, _, _ = torchrun(demo_data, tmp_path / "straight", "none", "train.steps=9", *common)
    split = tmp_path / "split"
    per_rank = f"train.output_dir={split}/disk${{oc.env:RANK}}"
    torchrun(demo_data, split, "none", "train.steps=6", *common, per_rank)
    state = torch.load(split / "disk0" / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["position"]) == (0, 6)  # taken at the epoch's last step
    assert not (split / "disk1").exists()
    r0, r1, _ = torchrun(demo_data, split, "none", "train.steps=9", *common, per_rank, "train.resume=auto")
    assert r0["step"] == 9
    assert_same(r0["model"], straight["model"])
    assert_same(r1["model"], straight["model"])
    assert not (split / "disk1").exists()


def test_lora_under_two_ranks_with_a_small_checkpoint(demo_data, tmp_path):
    """LoRA under DDP: frozen base weights are left out of the gradient all-reduce, the ranks end with the
    same weights, the base stays bit-identical, and rank 0's checkpoint holds only the trained tensors."""
    r0, r1, _ = torchrun(demo_data, tmp_path, "none", "train.steps=3", "data.val=null",
                         "model.peft={name: lora, rank: 2}", "model.freeze_prompt_encoder=true")
    assert r0["step"] == r1["step"] == 3
    assert_same(r0["model"], r1["model"])
    torch.manual_seed(0)  # ddp_run's train.seed: the random base the run adapted
    from samft.models import build_model

    base = build_model("vit_tiny", 64).state_dict()
    for key, value in base.items():
        if key.startswith(("image_encoder.", "prompt_encoder.")):
            assert torch.equal(r0["model"][key], value), key
    state = torch.load(Path(r0["run_dir"]) / "checkpoints" / "last.pt", weights_only=True)
    assert all(".lora." in k or k.startswith("mask_decoder.") for k in state["model"])
    assert any(".lora.b.q" in k for k in state["model"]) and state["peft"]["base"]["path"] is None


@pytest.mark.slow  # three 2-rank launches: ~90 s on 2 busy cores
@pytest.mark.long
def test_mixture_resumes_exactly_under_two_ranks(demo_data, tmp_path):
    """A weighted mixture (the SA-1B folder + tar shards of the val images): 2 + 2 == 4 steps on both ranks
    (each rank draws its shard of the mixture's epoch; workers are covered in tests/data/test_readers.py)."""
    import tarfile

    tar = tmp_path / "sa_000000.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted((demo_data / "val").iterdir()):
            if not p.name.startswith("."):
                tf.add(p, arcname=p.name)
    common = [f"data.train=[{{name: sa1b, root: {demo_data}/train, weight: 2}}, "
              f"{{name: sa1b_tar, tars: {tar}, weight: 1}}]", "data.val=null"]
    straight, straight1, _ = torchrun(demo_data, tmp_path / "straight", "none", "train.steps=4", *common)
    torchrun(demo_data, tmp_path / "split", "none", "train.steps=2", *common)
    r0, r1, _ = torchrun(demo_data, tmp_path / "split", "none", "train.steps=4", *common, "train.resume=auto")
    assert r0["step"] == r1["step"] == 4
    assert_same(r0["model"], straight["model"])
    assert_same(r1["model"], straight1["model"])
