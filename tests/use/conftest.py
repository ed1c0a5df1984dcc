"""A real (2-step) samft run on the demo data, shared by the export, predict, AMG and evaluation tests."""

from pathlib import Path

import numpy as np
import pytest
import torch

from samft.config import load
from samft.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained_run(demo_data, tmp_path_factory) -> Path:
    """Run folder of vit_tiny at 64 px trained 2 steps (best.pt, last.pt, config.yaml)."""
    root = tmp_path_factory.mktemp("run")
    cfg = load(REPO / "configs" / "demo.yaml", [
        f"data.train={demo_data / 'train'}", f"data.val={demo_data / 'val'}", "data.num_workers=0",
        "model.image_size=64", "train.steps=2", "train.val_every=2", "train.checkpoint_every=2",
        "train.progress=false", "train.run_name=use", "tracking.enabled=false", "eval.max_images=1",
        "eval.clicks=0",
    ])
    result = Trainer(cfg, project_root=root).fit()
    return result.run_dir


@pytest.fixture(scope="session")
def looks_fine_tuned():
    """``perturb(model)``: every weight moved off its initial value, as after fine-tuning."""
    return _perturb


def _perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 else 1.0))
    return model


@pytest.fixture(scope="session")
def test_image() -> np.ndarray:
    """A 48 x 64 image with a few flat shapes (masks for the generator to find)."""
    image = np.full((48, 64, 3), 30, np.uint8)
    image[5:25, 8:30] = (220, 40, 40)
    image[28:44, 35:60] = (40, 200, 60)
    image[10:20, 40:55] = (240, 240, 20)
    return image
