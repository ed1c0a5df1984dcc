"""Shared fixtures: the demo dataset (made once per session) and the location of ../shared."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small synthetic SA-1B-style dataset with train/ and val/ folders (real JPEG + RLE json)."""
    from samft.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, train_images=12, val_images=4, size=(160, 120), seed=0)
    return root


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it ships with CI, not with a user's clone): real-data test skipped")
    return SHARED
