"""Data: the readers (registered in :data:`samft.registry.DATASETS`), their shared pipeline, mixtures,
augmentations, distance maps, collate (the typed Batch) and demo data (prompts: samft.prompting).

The engine's contract::

    ds = DATASETS.build({"name": "sa1b", "root": root}, image_size=1024, max_masks=64, prompt="point_or_box", ...)
    loader = DataLoader(ds, batch_size=B, collate_fn=collate_masks)
"""

from samft.data.base import MaskDataset
from samft.data.coco import CocoDataset
from samft.data.collate import Batch, collate_masks
from samft.data.errors import BadFile, DataError
from samft.data.label_images import LabelImageDataset
from samft.data.mixing import MixedDataset
from samft.data.sa1b import SA1BDataset
from samft.data.sa1b_tar import SA1BTarDataset

__all__ = ["BadFile", "Batch", "CocoDataset", "DataError", "LabelImageDataset", "MaskDataset", "MixedDataset",
           "SA1BDataset", "SA1BTarDataset", "collate_masks"]
