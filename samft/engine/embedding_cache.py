"""On-disk cache of image embeddings for decoder-only fine-tuning.

With the image encoder frozen (and no image augmentation), an image's embedding never changes, yet
the encoder is by far the most expensive part of SAM. The cache computes each embedding once and
reads it back in later epochs and later runs. Entries live under a folder named by a fingerprint
of everything the embedding depends on: the encoder's weights, the input size, the input frame
(resize + pad, or stretch to the square) and the preprocessing version. Another checkpoint, input
size, frame or preprocessing finds another folder, so a stale embedding is never served. Entries are
written atomically, so concurrent ranks and interrupted runs never leave a half-written file behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from samft.data import Batch, collate_masks
from samft.data.sa1b import SKIPPED
from samft.models.checkpoint import weights_sha256

# Bump when resize/pad/normalisation change: every cached embedding is then recomputed.
PREPROCESSING_VERSION = 1


def encoder_fingerprint(encoder: nn.Module, image_size: int, input_frame: str = "longest_side") -> str:
    """Hash of the encoder's weights, the input size and frame and the preprocessing version."""
    # SAM's frame keeps the key it had before frames existed, so caches written then stay valid
    frame = "" if input_frame == "longest_side" else f"{input_frame}:"
    key = f"v{PREPROCESSING_VERSION}:{image_size}:{frame}{weights_sha256(encoder.state_dict())}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


class EmbeddingCache:
    """Image embeddings ``[C, h, w]`` keyed by image file, stored as fp16 ``.pt`` files.

    Args:
        folder: Cache root; entries go to ``folder/<encoder fingerprint>/``.
        encoder: The frozen image encoder (its weights are part of the key).
        image_size: Model input side.
        input_frame: How images fill the input (``samft.archs.SamArch.input_frame``).
    """

    def __init__(self, folder: str | Path, encoder: nn.Module, image_size: int,
                 input_frame: str = "longest_side") -> None:
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("The embedding cache needs a frozen image encoder: set model.freeze_image_encoder=true.")
        self.fingerprint = encoder_fingerprint(encoder, image_size, input_frame)
        self.folder = Path(folder) / self.fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, image_file: str) -> Path:
        return self.folder / (hashlib.sha1(str(Path(image_file).resolve()).encode()).hexdigest() + ".pt")

    def get(self, image_file: str) -> torch.Tensor | None:
        """The cached embedding of ``image_file``, or None."""
        path = self._path(image_file)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a foreign or damaged file is a miss, recomputed and replaced
            return None

    def put(self, image_file: str, embedding: torch.Tensor) -> None:
        """Store ``embedding`` ``[C, h, w]`` (as fp16) atomically."""
        path = self._path(image_file)
        fd, tmp = tempfile.mkstemp(prefix=".emb.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(embedding.detach().to("cpu", torch.float16).contiguous(), handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @torch.no_grad()
    def embeddings(self, files: list[str], compute, found: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """``[B, C, h, w]`` embeddings of ``files``: cached ones read, the others computed and stored.

        Args:
            files: Image files of the batch, in batch order.
            compute: ``compute(indices) -> [len(indices), C, h, w]`` encodes the batch images at those
                positions (only the misses are encoded).
            found: Entries already read for ``files`` (None for a miss), e.g. by the data loader's
                workers ahead of time (:func:`with_cached_embeddings`); read here when not given.
        """
        found = [self.get(f) for f in files] if found is None else list(found)
        missing = [i for i, e in enumerate(found) if e is None]
        self.hits += len(files) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = compute(missing)
            for i, embedding in zip(missing, computed):
                self.put(files[i], embedding)
                found[i] = embedding.detach().to("cpu", torch.float16)
        return torch.stack(found)


class _WithCachedEmbeddings(Dataset):
    """A dataset whose items also carry their cached embedding (or None), so the data loader's
    workers read the cache ahead of the training step instead of the step waiting for the disk."""

    def __init__(self, dataset: Dataset, cache: EmbeddingCache) -> None:
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if SKIPPED not in item:
            item["cached_embedding"] = self.cache.get(item["meta"]["file"])
        return item


def _collate_with_embeddings(items: list[dict[str, Any]]) -> Batch:
    return collate_masks(items).replace(cached_embeddings=[it["cached_embedding"] for it in items
                                                           if SKIPPED not in it])


def with_cached_embeddings(dataset: Dataset, cache: EmbeddingCache) -> tuple[Dataset, Any]:
    """``(dataset, collate_fn)`` for a DataLoader whose batches carry ``cached_embeddings``: one entry
    per image, the cached ``[C, h, w]`` embedding or None (to be computed by
    :meth:`EmbeddingCache.embeddings`). With ``data.num_workers > 0`` the reads overlap training."""
    return _WithCachedEmbeddings(dataset, cache), _collate_with_embeddings
