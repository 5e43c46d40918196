"""Secrets in the environment (API keys, tokens) never reach a run folder, W&B or the console.

A secret is the value of an environment variable whose name says so (``WANDB_API_KEY``,
``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``). The only way one gets into what a run
writes is through its config (``${oc.env:WANDB_API_KEY}``, or the value typed out), so configs
are checked for them before a run starts (``secrets_in``), and error messages are redacted
before they are printed (``redact``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

_SECRET_NAME = re.compile(r"(?:^|_)(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.I)
# Shorter values (a "1", a "true") are not secrets and would match everywhere.
MIN_SECRET_LENGTH = 8


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variable name -> value, for the variables whose name marks a secret."""
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if _SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH
    }


def secrets_in(strings: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(where, environment variable) for each (where, text) that contains a secret's value."""
    secrets = secret_values()
    return [
        (where, name) for where, text in strings for name, value in secrets.items() if value in text
    ]


def redact(text: str) -> str:
    """``text`` with every secret's value replaced by ``<$NAME>``."""
    for name, value in sorted(secret_values().items(), key=lambda item: -len(item[1])):
        text = text.replace(value, f"<${name}>")
    return text
