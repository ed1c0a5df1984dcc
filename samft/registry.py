"""Name -> callable registries for every pluggable piece of samft.

A config names a loss, a weighting strategy, a schedule or a metric; the registry turns the
name into the object. Built-in entries register themselves with a decorator when their
package is imported; third-party packages add entries through the entry-point group
``samft.<kind>`` (for example ``samft.losses``) without forking samft::

    # pyproject.toml of a plugin distribution
    [project.entry-points."samft.losses"]
    my_loss = "my_pkg.losses:my_loss"

Entry points are listed without importing anything and loaded on first ``get``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from samft.errors import UserError


class RegistryError(UserError, ValueError):
    """A name, spec or plugin that cannot be resolved; the message says what to do."""


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return " Did you mean 'x'?" for the closest choices, or "" when none is close."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


class Registry:
    """Maps names to callables of one plugin kind.

    Args:
        kind: Plural noun of the kind (``"losses"``); the entry-point group is ``samft.<kind>``.
        item: Singular noun for messages (default: ``kind`` without its final "s").
        builtins: Module imported before the first lookup so that built-in entries exist
            without the caller importing them.
        contract: The call contract every entry must follow; appended to the docstring.
        required: Facts every entry must declare when it registers, e.g. ``("better",)`` for
            metrics (which way is better); read back with :meth:`info`.
    """

    def __init__(self, kind: str, builtins: str | None = None, contract: str = "", item: str | None = None,
                 required: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.item = item or kind.removesuffix("s")
        self.group = f"samft.{kind}"
        self._builtins = builtins
        self._builtins_loaded = builtins is None
        self._entries: dict[str, Callable[..., Any]] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._required = required
        self.__doc__ = f"Registry of samft {kind}.\n\n{contract}".strip()

    # -- registration ---------------------------------------------------------------------
    def register(self, name: str, **info: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``obj`` under ``name`` with its declared ``info``; a duplicate name
        or a missing required fact (``better=`` for metrics) is an error.

        ``checks={option: check}`` declares how :meth:`build` checks option values, each
        ``check(option, value)`` raising :class:`samft.checks.OptionError`. A function is only
        bound at build time, so without them a bad option of a loss function would surface when
        the loss first runs, hours into training; a class checks its options in ``__init__``."""
        if not name or name != name.lower() or not name.replace("_", "").isalnum():
            raise RegistryError(f"{self.kind}: name {name!r} must be lowercase snake_case.")
        missing = [key for key in self._required if key not in info]
        if missing:
            raise RegistryError(f"{self.kind}: {name!r} must declare {', '.join(missing)} when it registers, "
                                f"e.g. @{self.kind.upper()}.register({name!r}, {missing[0]}=...).")

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise RegistryError(
                    f"{self.kind}: {name!r} is registered twice, by "
                    f"{_where(self._entries[name])} and by {_where(obj)}. Rename one of them."
                )
            self._entries[name] = obj
            self._info[name] = dict(info)
            return obj

        return decorator

    # -- lookup ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Sorted built-in and entry-point names; plugins are listed, not imported."""
        self._load_builtins()
        return sorted(set(self._entries) | set(self._entry_points()))

    def plugin_names(self) -> list[str]:
        """Sorted entry-point names only: nothing is imported, not even the built-ins (for torch-free checks)."""
        return sorted(ep.name for ep in metadata.entry_points(group=self.group))

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def get(self, name: str) -> Callable[..., Any]:
        """Return the callable registered as ``name``, loading a plugin on first use."""
        self._load_builtins()
        if name in self._entries:
            return self._entries[name]
        entry_point = self._entry_points().get(name)
        if entry_point is None:
            raise RegistryError(
                f"Unknown {self.item} {name!r}."
                f"{did_you_mean(name, self.names())} Known {self.kind}: {', '.join(self.names())}."
            )
        obj = _load_entry_point(entry_point, self.group)
        self._entries[name] = obj
        return obj

    def info(self, name: str) -> dict[str, Any]:
        """What ``name`` declared when it registered (a plugin's: its callable's attributes named
        like the registry's required facts, e.g. ``my_metric.better = "higher"``)."""
        obj = self.get(name)
        if name in self._info:
            return dict(self._info[name])
        return {key: getattr(obj, key) for key in self._required if hasattr(obj, key)}

    def build(self, spec: Mapping[str, Any] | str, **extra: Any) -> Any:
        """Build from ``{"name": ..., **kwargs}``: classes are instantiated, functions bound.

        Args:
            spec: A mapping with ``name`` and the keyword arguments, or a bare name.
            extra: Keyword arguments supplied by the caller (not the config), e.g. a model.

        Returns:
            ``cls(**kwargs)`` for a class, ``functools.partial(fn, **kwargs)`` for a function.
        """
        if isinstance(spec, str):
            spec = {"name": spec}
        spec = dict(spec)
        if "name" not in spec:
            raise RegistryError(f"A {self.kind} spec needs a 'name' key; got keys {sorted(spec)}.")
        name = spec.pop("name")
        obj = self.get(name)
        kwargs = {**spec, **extra}
        check_options(obj, kwargs, f"{self.item} {name!r}")
        for option, check in self._info.get(name, {}).get("checks", {}).items():
            if option in kwargs:
                check(option, kwargs[option])
        if inspect.isclass(obj):
            return obj(**kwargs)
        return functools.partial(obj, **kwargs) if kwargs else obj

    # -- internals ------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            importlib.import_module(self._builtins)

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        found: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self._entries and found.get(ep.name) is None and not _is_same(ep, self._entries[ep.name]):
                raise RegistryError(
                    f"{self.kind}: {ep.name!r} is registered twice, by {_where(self._entries[ep.name])} "
                    f"and by the entry point {ep.value!r} of distribution {_dist_name(ep)!r}. "
                    "Rename the plugin's entry point."
                )
            found[ep.name] = ep
        return found


def _is_same(ep: metadata.EntryPoint, obj: Callable[..., Any]) -> bool:
    module, _, attr = ep.value.partition(":")
    return getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == attr


def _where(obj: Callable[..., Any]) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "<unknown distribution>"


def _load_entry_point(ep: metadata.EntryPoint, group: str) -> Callable[..., Any]:
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin must not look like a samft bug
        raise RegistryError(
            f"The plugin {ep.name!r} (entry point {ep.value!r} in group {group!r} of distribution "
            f"{_dist_name(ep)!r}) failed to load: {type(exc).__name__}: {exc}. Fix or uninstall "
            f"that distribution (pip uninstall {_dist_name(ep)})."
        ) from exc


def check_options(obj: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in accepted:
            raise RegistryError(
                f"{what} has no option {key!r}.{did_you_mean(key, accepted)} "
                f"Its options: {', '.join(accepted) or 'none'}."
            )


LOSSES = Registry(
    "losses",
    item="loss",
    builtins="samft.losses",
    contract=(
        "A loss is called as ``loss(logits, target, **batch_extras)`` with float tensors of the\n"
        "same shape ``[N, ...]`` (logits first); a target value < 0 means 'ignore' where the loss\n"
        "supports it. It returns a scalar tensor, or a dict with a ``loss`` key and one key per\n"
        "component for logging. Compute in fp32; the result must stay finite for logits of +-1e4."
    ),
)
WEIGHTINGS = Registry(
    "weightings",
    builtins="samft.weighting",
    contract=(
        "A weighting strategy is a class built with ``terms`` (the loss-term names) and its config\n"
        "options; it combines a dict of per-term losses into one total and reports its weights."
    ),
)
SCHEDULES = Registry(
    "schedules",
    builtins="samft.schedules",
    contract="A schedule is a class built from its options; ``schedule(step) -> float``.",
)
METRICS = Registry(
    "metrics",
    builtins="samft.metrics",
    contract=(
        "A metric is called as ``metric(logits_or_masks, target)`` on tensors ``[N, H, W]`` and\n"
        "returns a tensor ``[N]`` of per-mask values. It declares which way is better when it\n"
        "registers: ``@METRICS.register(name, better=\"higher\" | \"lower\")`` (a plugin: a\n"
        "``better`` attribute on the function); run comparison and best checkpoints rely on it."
    ),
    required=("better",),
)
DATASETS = Registry(
    "datasets",
    builtins="samft.data",
    contract=(
        "A dataset reader is a class built as ``cls(**options, **settings)``: ``options`` are its own\n"
        "config options (``data.train: {name: coco, annotations: ..., images: ...}``; those it declares\n"
        "as ``paths`` are resolved against the project folder and must exist), ``settings`` the shared\n"
        "pipeline's (image_size, input_frame, max_masks, prompt, transforms, filters, on_error, seed, crop,\n"
        "...), which it passes on to ``samft.data.base.MaskDataset.__init__``. It subclasses ``MaskDataset``\n"
        "and implements ``_index()`` (one record per image: size and per-annotation area, scores and\n"
        "crowd flags, or an ``error``) and ``_load(index, positions)`` (the image and the chosen masks\n"
        "as RLEs or a label image); the base class does sampling, resize, crops, augmentation,\n"
        "prompts, distance maps and the on_error policy. It declares which options are paths when it\n"
        "registers: ``@DATASETS.register(name, paths=(\"root\",))`` (a plugin: a ``paths`` attribute)."
    ),
    required=("paths",),
)
PEFT = Registry(
    "peft",
    item="PEFT method",
    builtins="samft.models.peft",
    contract=(
        "A PEFT method is a class built from its options (``model.peft: {name: lora, rank: 8}``) with\n"
        "``adapts`` (the SAM parts whose base weights it freezes: image_encoder, prompt_encoder,\n"
        "mask_decoder), ``foldable`` (whether ``merge`` works), ``needs_vit_blocks`` (it reaches into\n"
        "segment_anything's ViT Block), ``check(encoder_depth, parts)`` (raise ValueError for options\n"
        "that do not fit the model), ``apply(model)`` (adapt a built SAM in place without renaming\n"
        "any base weight; at step 0 the outputs must equal the base model's exactly) and ``merge(model)``\n"
        "(fold into the base weights, leaving a plain SAM). Subclass samft.models.peft.PeftMethod."
    ),
)
MODELS = Registry(
    "models",
    item="model",
    builtins="samft.models.zoo",
    contract=(
        "A model entry (``samft.models.zoo.ModelSpec``) is called as ``spec(image_size)`` and returns an\n"
        "untrained model in train mode with SAM's interface: submodules ``image_encoder`` (normalised\n"
        "``[B, 3, S, S]`` -> embedding ``[B, C, S/16, S/16]``), ``prompt_encoder`` and ``mask_decoder``\n"
        "(segment_anything's, called part by part by ``samft.models.forward``; a model whose decoder needs\n"
        "more defines ``predict_per_prompt`` on itself or its decoder, returning masks, IoUs and optionally\n"
        "object-score logits, as SAM 2.1 and HQ-SAM do) and buffers\n"
        "``pixel_mean``/``pixel_std`` (0..255 RGB normalisation). It declares the released checkpoint\n"
        "layout it loads (``release``), the parts ``model.freeze_*`` may freeze (``parts``), where\n"
        "layer-wise lr decay applies (``decay_layer``), the blocks activation checkpointing wraps\n"
        "(``encoder_blocks``), the fused q/k/v Linear modules LoRA adapts (``peft_targets``) and where\n"
        "q, k and v sit in their rows (``qkv_rows``). PEFT and freezing read these. Built-in sizes\n"
        "and input sides are in the torch-free table ``samft.archs.ARCHS`` (what config validation\n"
        "reads); a plugin model's input side is checked when it is built."
    ),
)
