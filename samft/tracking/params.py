"""Turning a nested config into MLflow params and a YAML artifact, within MLflow's limits."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import yaml

# MLflow's server-side limits (mlflow/utils/validation.py); exceeding them fails the whole batch.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")
TRUNCATION_MARK = "...[truncated]"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys.

    Lists stay one value (``loss.terms = [...]``): a list is one setting in a config, and its
    items have no stable names to compare across runs.

    Args:
        config: Nested mapping; values of any type.
        prefix: Key prefix used by the recursion.

    Returns:
        ``{"a.b.c": value}``; an empty nested mapping yields ``{"a.b": {}}`` so it is not lost.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def sanitize_key(key: str) -> str:
    """Make ``key`` a valid MLflow param/metric name.

    Characters MLflow rejects become ``_``; keys over 250 characters keep their head and an
    8-hex-digit hash of the whole key, so distinct long keys stay distinct.
    """
    clean = _BAD_KEY_CHARS.sub("_", str(key)).strip("/") or "_"
    clean = re.sub(r"/{2,}", "/", clean)
    if len(clean) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(clean.encode()).hexdigest()[:8]
        clean = clean[: MAX_KEY_LENGTH - 9] + "~" + digest
    return clean


def param_value(value: Any) -> str:
    """String form of a config value, cut to MLflow's 6000-character limit with a visible mark."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, Mapping)):
        text = json.dumps(plain(value), sort_keys=True, default=str)
    else:
        text = str(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        text = text[: MAX_PARAM_VALUE_LENGTH - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """Dotted, sanitised keys -> string values of the whole config."""
    return {sanitize_key(k): param_value(v) for k, v in flatten(plain(config)).items()}


def plain(value: Any) -> Any:
    """Convert a config (OmegaConf, tuples, paths, numpy scalars) into plain YAML/JSON types."""
    if hasattr(value, "_metadata") and hasattr(value, "_content"):  # OmegaConf container
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config_yaml(config: Mapping[str, Any]) -> str:
    """The resolved config as YAML text, keys in their original order."""
    return yaml.safe_dump(plain(config), sort_keys=False, default_flow_style=False)
