"""``key=value`` command-line overrides onto a structured OmegaConf schema.

One command-line style for every script (the recipes, perf.py, gpu_check.py,
hypergrad_fidelity.py): defaults from a dataclass, layers on top (presets), then the overrides;
every OmegaConf failure becomes a ConfigError that names the key and, for an unknown key, the
closest known ones.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from sgl_betty.errors import ConfigError
from sgl_betty.yaml_configs import yaml_problem


def check_form(overrides: list[str], example: str) -> None:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. {example})")


def dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a config node, dotted (``search.method``, ...)."""
    keys = []
    for name in node:
        value = node[name]
        dotted = f"{prefix}{name}"
        keys += dotted_keys(value, dotted + ".") if isinstance(value, DictConfig) else [dotted]
    return keys


def describe(error: OmegaConfBaseException, schema: DictConfig) -> str:
    """OmegaConf's error in one line, naming the key; close matches for an unknown key."""
    key = getattr(error, "full_key", None)
    message = str(error).splitlines()[0]
    if isinstance(error, ConfigKeyError):
        close = difflib.get_close_matches(str(key), dotted_keys(schema), n=3, cutoff=0.5)
        known = ", ".join(str(name) for name in schema)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; the keys are {known}"
        return f"unknown config key {key!r}{hint}"
    if key:
        return f"invalid value for {key}: {message}"
    return message


def merge_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg`` with the overrides on top; a value of the wrong shape (a mapping or a list where
    the schema holds the other) is named instead of OmegaConf's bare TypeError."""
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except yaml.YAMLError as error:  # an override's value, parsed as YAML
        raise ConfigError(f"an override is not valid YAML: {yaml_problem(error)}") from None
    except TypeError:
        for item in overrides:
            try:
                OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
            except TypeError:
                key = item.split("=", 1)[0]
                raise ConfigError(
                    f"override {item!r}: {key} cannot take a value of that shape "
                    "(a mapping or a list where the config holds something else)"
                ) from None
        raise


def load_overrides(schema: type, overrides: list[str], *layers: Any, example: str) -> DictConfig:
    """``schema``'s defaults <- each layer (a preset's dict) <- the ``key=value`` overrides,
    as a typed DictConfig; any problem is a ConfigError naming it."""
    check_form(overrides, example)
    base = OmegaConf.structured(schema)
    try:
        cfg = base
        for layer in layers:
            cfg = OmegaConf.merge(cfg, layer)
        return merge_overrides(cfg, overrides)
    except OmegaConfBaseException as error:
        raise ConfigError(describe(error, base)) from None
