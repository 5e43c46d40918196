"""The YAML presets, installed as ``sgl_betty.configs`` (package data, as torchtune ships the
configs of its recipes): ``<name>.yaml`` for every recipe, ``<recipe>/<name>.yaml`` for one.
In the repository they stay in ``configs/``; an editable install maps that folder here."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
