"""Why ``torch.load(weights_only=True)`` refused a file, said without PyTorch's own advice.

PyTorch's message suggests retrying with ``weights_only=False``, which runs whatever code the file
carries. samft never loads that way and must not pass the advice on: a checkpoint from a stranger
is exactly the case where it is dangerous.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_failure_reason(exc: BaseException) -> str:
    """One sentence on why the file could not be read as weights, and what to do instead.

    Args:
        exc: What ``torch.load(path, weights_only=True)`` raised.
    """
    text = _ANSI.sub("", str(exc))
    if "Weights only load failed" in text or "weights_only" in text:
        found = _GLOBAL.search(text)
        what = f" (a {found.group(1)} object)" if found else ""
        return (f"it holds Python objects beyond tensors and plain containers{what}, and samft only reads "
                "weights: it never runs code from a checkpoint. Where the file was made, save the weights "
                "alone (torch.save(model.state_dict(), path)) and use that file")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return (f"{type(exc).__name__}: {first} It may be truncated or not a PyTorch file; copy or "
            "download it again")
