"""A non-editable install ships the presets: build the wheel from a copy of the sources,
install it into an empty folder, and load every preset from there (not from the repository)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("sgl_betty", "problems", "engine", "configs", "pyproject.toml", "README.md")

LOAD_EVERY_PRESET = """
import json, sys
import sgl_betty
from sgl_betty.experiment.config import CONFIG_DIR, load_config
loaded = []
for name, recipe in json.loads(sys.argv[1]):
    cfg = load_config([f"preset={name}"], recipe=recipe)
    loaded.append([cfg.preset, recipe])
print(json.dumps({"package": sgl_betty.__file__, "config_dir": str(CONFIG_DIR), "loaded": loaded}))
"""


def repository_presets() -> list[tuple[str, str | None]]:
    """(preset, recipe) for every YAML file under configs/ of the repository."""
    found = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        folder = path.parent.relative_to(ROOT / "configs")
        found.append((path.stem, None if folder == Path(".") else str(folder)))
    return found


@pytest.mark.slow
def test_the_wheel_ships_every_preset_and_load_config_finds_them(tmp_path):
    source = tmp_path / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source], check=True
    )
    (wheel,) = wheels.glob("sgl_betty-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    presets = repository_presets()
    for name, recipe in presets:
        inside = f"sgl_betty/configs/{recipe + '/' if recipe else ''}{name}.yaml"
        assert inside in shipped, f"{inside} is not in {wheel.name}"

    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_EVERY_PRESET, json.dumps(presets)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(site)  # the installed copy, not the repository
    assert Path(report["config_dir"]) == site / "sgl_betty" / "configs"
    assert [tuple(item) for item in report["loaded"]] == presets
