"""Shared by the command-line tests: overrides that make a demo training run take seconds, and the
environment tools run in."""

import os

import pytest

# Four steps of the demo recipe at 64 px with few masks and clicks: every code path of a real run
# (logging, validation, overlays, checkpoints, MLflow) in a few seconds on 2 CPU cores.
TINY_TRAIN = ["train.steps=4", "train.val_every=4", "train.checkpoint_every=4", "tracking.log_every=2",
              "model.image_size=64", "data.max_masks=4", "prompts.correction_clicks=1",
              "prompts.extra_rounds=0", "eval.max_images=2", "eval.max_masks=2", "eval.clicks=1",
              "tracking.overlays=2", "tracking.system_metrics=false", "train.threads=1"]
TINY_EVAL = ["eval.max_images=2", "eval.max_masks=2", "eval.clicks=1"]


@pytest.fixture(scope="session")
def tiny_train() -> list[str]:
    return list(TINY_TRAIN)


@pytest.fixture(scope="session")
def tiny_eval() -> list[str]:
    return list(TINY_EVAL)


@pytest.fixture(scope="session")
def tool_env() -> dict[str, str]:
    """Environment of a tool run by a test: one thread, the embedded store of its working folder."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    return env
