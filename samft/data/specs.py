"""``data.train`` / ``data.val`` as written in a config -> a list of dataset specs.

Accepted forms (the first is what every config before readers existed wrote)::

    train: data/mine/train                                         # an SA-1B folder (reader sa1b)
    train: {name: coco, annotations: ann.json, images: imgs/}      # one spec of any reader
    train:                                                          # a weighted mixture
      - {name: sa1b_tar, tars: data/sa1b/, weight: 3}
      - {name: label_images, images: cells/img, labels: cells/lbl, weight: 1, label: cells}

Each spec becomes ``{"name", "label", "weight", "options"}``: ``weight`` is the sampling weight in a
training mixture (default 1), ``label`` names the dataset in logs (``val/<label>/miou_point``;
default: the reader's name, numbered when several share it).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any



def dataset_specs(value: Any, where: str) -> list[dict[str, Any]]:
    """The specs of ``value`` (see the module docstring).

    Raises:
        ValueError: a form that is none of these; the message starts with ``where``.
    """
    value = plain(value)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{where}=[]: list at least one dataset.")
    specs = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if isinstance(value, list) else where
        if isinstance(item, str) and item.strip():
            spec = {"name": "sa1b", "root": item}
        elif isinstance(item, Mapping):
            spec = dict(item)
        else:
            raise ValueError(f"{at}={item!r}: use an SA-1B folder path or a spec {{name: <reader>, ...options}}.")
        if "name" not in spec:
            raise ValueError(f"{at}: add the reader's name ({at}.name=sa1b, sa1b_tar, coco or label_images).")
        name = spec.pop("name")
        weight = spec.pop("weight", 1.0)
        label = spec.pop("label", None)
        specs.append({"name": str(name), "label": label, "weight": weight, "options": spec, "where": at})
    taken: dict[str, int] = {}
    for spec in specs:
        if spec["label"] is None:
            taken[spec["name"]] = taken.get(spec["name"], 0) + 1
    seen: dict[str, int] = {}
    for spec in specs:
        if spec["label"] is None:
            n = seen[spec["name"]] = seen.get(spec["name"], 0) + 1
            spec["label"] = spec["name"] if taken[spec["name"]] == 1 else f"{spec['name']}{n}"
    return specs


def plain(value: Any) -> Any:
    """Config containers (OmegaConf's, tuples) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def reader_options(cls: Any) -> tuple[list[str], list[str]]:
    """``(options, required)``: the reader's own keyword options (its shared settings excluded)."""
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [n for n in names if params[n].default is inspect.Parameter.empty]
    return names, required
