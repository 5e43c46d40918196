"""Reading configuration YAML: presets of the project and config.yaml files of run folders.

YAML is read with a safe loader (OmegaConf's, a ``yaml.SafeLoader``): a ``!!python/...`` tag
constructs nothing and is refused with a message naming the file and the line. A config.yaml
read back from a run folder holds resolved values only (the project writes it resolved): an
interpolation in it, ``${oc.env:...}`` or any other resolver, could read the environment of
whoever resumes or compares the run (a crafted ``tracking.group: ${oc.env:WANDB_API_KEY}``
would put the key into the W&B files), so it is refused, never resolved.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sgl_betty.errors import ConfigError


def yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    tag = re.search(r"could not determine a constructor for the tag '(.+)'", problem)
    if tag:
        tag = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        problem = (
            f"the tag {tag} is not allowed (config files hold plain values: numbers, strings, "
            "lists and mappings; nothing in them is constructed or run)"
        )
    return f"{problem}{where}"


def read_yaml_config(path: str | Path, what: str) -> DictConfig:
    """The mapping in YAML file ``path`` (``what`` names it: "preset", "run config"), read
    safely; ConfigError naming the file, the line and the problem."""
    path = Path(path)
    try:
        config = OmegaConf.load(path)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"the {what} {path} is not valid YAML: {yaml_problem(error)}; fix the file"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the {what} {path}: {error}") from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"the {what} {path} cannot be read as a config: {error}") from None
    if not isinstance(config, DictConfig):
        raise ConfigError(
            f"the {what} {path} holds a {type(config).__name__}, not a mapping of keys to "
            "values (e.g. `learners: 2`); fix the file"
        )
    return config


def interpolations(node, prefix: str = "") -> list[tuple[str, str]]:
    """Every ``${...}`` interpolation in ``node``, unresolved: (dotted key, its text)."""
    found = []
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for key in keys:
        dotted = f"{prefix}{key}"
        child = node._get_node(key)
        if OmegaConf.is_interpolation(node, key):
            found.append((dotted, str(child._value())))
            continue
        if isinstance(child, (DictConfig, ListConfig)):
            found += interpolations(child, dotted + ".")
    return found


def reject_interpolations(config: DictConfig, path: str | Path) -> None:
    """ConfigError when a config read from a run folder holds interpolations (see module)."""
    found = interpolations(config)
    if found:
        shown = ", ".join(f"{key}: {text}" for key, text in found[:3])
        raise ConfigError(
            f"{path} contains interpolations ({shown}{', ...' if len(found) > 3 else ''}): "
            "a run folder's config.yaml holds resolved values only, and resolving these could "
            "read this machine's environment. It was not written by sgl-betty as it is; replace "
            "them by plain values, or start a new run"
        )
