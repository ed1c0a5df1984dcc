"""Embedding cache: reuse across epochs and runs, invalidation, and refusal where it would be wrong."""

from pathlib import Path

import pytest
import torch

from samft.config import ConfigError, load
from samft.engine.embedding_cache import EmbeddingCache, encoder_fingerprint
from samft.engine.trainer import Trainer
from samft.models import build_model, freeze

REPO = Path(__file__).resolve().parents[2]


def cached_config(data, root, *overrides):
    return load(REPO / "configs" / "demo.yaml", [
        f"data.train={data / 'train'}", "data.val=null", "data.num_workers=0", "data.max_masks=3",
        "model.image_size=64", "prompts.correction_clicks=0", "prompts.extra_rounds=0", "train.progress=false",
        "tracking.enabled=false", f"train.output_dir={root / 'out'}", "model.freeze_image_encoder=true",
        f"model.embedding_cache={root / 'cache'}", *overrides])


def test_cache_computes_each_image_once_and_matches_the_encoder(demo_data, tmp_path):
    trainer = Trainer(cached_config(demo_data, tmp_path, "train.steps=9"))  # 12 images, 2 per step
    trainer.fit()
    cache = trainer.embedding_cache
    assert (cache.misses, cache.hits) == (12, 6)  # epoch 1 encodes every image, epoch 2 reads them
    again = Trainer(cached_config(demo_data, tmp_path, "train.steps=2"))  # a later run reuses the folder
    again.fit()
    assert again.embedding_cache.misses == 0 and again.embedding_cache.hits == 4

    batch = next(again._batches(again._loader(again.train_set, again.sampler)))
    with torch.no_grad():
        fresh = again.model.image_encoder(
            (batch.images.float() - again.model.pixel_mean) / again.model.pixel_std * batch.valid[:, None])
    cached = again._cached_embeddings(batch).embeddings
    torch.testing.assert_close(cached, fresh, atol=2e-3, rtol=2e-3)  # fp16 storage


def test_other_weights_or_input_size_use_another_folder():
    torch.manual_seed(0)
    a = build_model("vit_tiny", 64).image_encoder
    torch.manual_seed(1)
    b = build_model("vit_tiny", 64).image_encoder
    assert encoder_fingerprint(a, 64) != encoder_fingerprint(b, 64)
    assert encoder_fingerprint(a, 64) != encoder_fingerprint(a, 128)
    assert encoder_fingerprint(a, 64) == encoder_fingerprint(a, 64)
    assert encoder_fingerprint(a, 64) == encoder_fingerprint(a, 64, "longest_side")  # keys written before frames
    assert encoder_fingerprint(a, 64) != encoder_fingerprint(a, 64, "square")


def test_damaged_entry_is_a_miss_and_is_replaced(tmp_path):
    model = build_model("vit_tiny", 64)
    freeze(model, image_encoder=True)
    cache = EmbeddingCache(tmp_path, model.image_encoder, 64)
    cache.put("a.jpg", torch.ones(4, 2, 2))
    cache._path("a.jpg").write_bytes(b"garbage")
    assert cache.get("a.jpg") is None
    out = cache.embeddings(["a.jpg"], lambda rows: torch.full((len(rows), 4, 2, 2), 3.0))
    assert out.shape == (1, 4, 2, 2) and cache.get("a.jpg").eq(3.0).all()
    assert not list(cache.folder.glob("*.tmp"))


def test_cache_is_refused_where_embeddings_would_change(demo_data, tmp_path):
    with pytest.raises(ConfigError, match="freeze_image_encoder"):
        Trainer(cached_config(demo_data, tmp_path, "model.freeze_image_encoder=false"))
    with pytest.raises(ConfigError, match="augment"):
        Trainer(cached_config(demo_data, tmp_path, "data.augment=[{name: HorizontalFlip}]"))


def test_loader_workers_read_the_cache_ahead_of_the_step(demo_data, tmp_path, monkeypatch):
    """With data.num_workers > 0 the cached embeddings arrive with the batch: the training process
    itself reads no cache file."""
    Trainer(cached_config(demo_data, tmp_path, "train.steps=6")).fit()  # one epoch: every image cached
    trainer = Trainer(cached_config(demo_data, tmp_path, "train.steps=3", "data.num_workers=1"))
    reads_here = []
    original = EmbeddingCache.get
    monkeypatch.setattr(EmbeddingCache, "get", lambda self, f: reads_here.append(f) or original(self, f))
    trainer.fit()
    assert reads_here == []  # read in the worker process (its appends go to its own copy of the list)
    assert (trainer.embedding_cache.hits, trainer.embedding_cache.misses) == (6, 0)
