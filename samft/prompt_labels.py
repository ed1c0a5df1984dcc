"""The labels of prompt tokens: one convention for the prompt samplers and the model's forward pass.

Prompts of one mask travel as ``points [P, 2]`` with ``labels [P]``: SAM's prompt encoder reads
1 as a positive click, 0 as a negative click and -1 as padding (a token it ignores); 2/3 mark the
top-left/bottom-right box corners (SAM 2's convention, which lets points and boxes share one tensor).

:mod:`samft.data.prompts` writes these labels and :mod:`samft.models.forward` reads them; neither
package may import the other, so the convention lives here. This module imports nothing.
"""

PAD = -1
NEGATIVE = 0
POSITIVE = 1
BOX_TOP_LEFT = 2
BOX_BOTTOM_RIGHT = 3

__all__ = ["BOX_BOTTOM_RIGHT", "BOX_TOP_LEFT", "NEGATIVE", "PAD", "POSITIVE"]
