"""SA-1B data: reader, index, augmentations, distance maps, collate and demo data (prompts: samft.prompting).

The engine's contract::

    ds = SA1BDataset(root, image_size=1024, max_masks=64, prompt="point_or_box", ...)
    loader = DataLoader(ds, batch_size=B, collate_fn=collate_masks)
"""

from samft.data.collate import Batch, collate_masks
from samft.data.errors import BadFile, DataError
from samft.data.sa1b import SA1BDataset

__all__ = ["BadFile", "Batch", "DataError", "SA1BDataset", "collate_masks"]
