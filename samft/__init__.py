"""samft: fine-tune Segment Anything with SAM's own recipe."""

__version__ = "0.1.0"
