"""One typed schema per concept: the recipes' config nodes are the library's configs, and every
choice list is one str-valued Enum."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sgl_betty import HypergradConfig, choices
from sgl_betty.choices import (
    Choice,
    Device,
    EvalLearners,
    HypergradType,
    Precision,
    SearchDataset,
    UnlabeledSource,
    WandbMode,
    values,
)
from sgl_betty.evaluation import TrainingSettings
from sgl_betty.experiment.config import ConfigError, RunConfig, load_config, sgl_config
from sgl_betty.experiment.evaluate import training_settings

ROOT = Path(__file__).resolve().parents[1]
CHOICES = [
    cls
    for cls in vars(choices).values()
    if isinstance(cls, type) and issubclass(cls, Choice) and cls is not Choice
]


def test_the_recipes_hypergrad_node_is_the_library_config():
    cfg = load_config(["preset=tiny", "hypergrad.type=neumann", "hypergrad.neumann_iterations=3"])
    assert OmegaConf.get_type(cfg.hypergrad) is HypergradConfig
    library = sgl_config(cfg).hypergrad
    assert library == HypergradConfig(
        type="neumann", neumann_iterations=3, unrolled_exact=cfg.hypergrad.unrolled_exact
    )
    assert set(cfg.hypergrad) == {f.name for f in dataclasses.fields(HypergradConfig)}


def test_each_entry_point_keeps_its_default_hypergradient():
    # The library's default is DARTS-1st (the released code), the recipes' the paper's unrolled.
    assert HypergradConfig().type == "first_order"
    schema = OmegaConf.structured(RunConfig).hypergrad
    assert schema.type == "unrolled"
    library = dataclasses.asdict(HypergradConfig())
    assert {key: schema[key] for key in library if key != "type"} == {
        key: value for key, value in library.items() if key != "type"
    }


def test_the_eval_section_extends_the_trainers_settings():
    schema = OmegaConf.structured(RunConfig).eval
    for setting in dataclasses.fields(TrainingSettings):
        if setting.name == "epochs":
            continue
        assert schema[setting.name] == setting.default, setting.name
    assert schema.epochs == 600  # the paper's; the trainer has no default
    cfg = load_config(["preset=tiny", "eval.lr=0.05", "eval.lr_schedule=step"])
    fields = {f.name: cfg.eval[f.name] for f in dataclasses.fields(TrainingSettings)}
    assert training_settings(cfg) == TrainingSettings(**fields)
    assert training_settings(cfg).lr_schedule == "step" and training_settings(cfg).lr == 0.05


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: c.__name__)
def test_a_choice_is_its_string(choice):
    for member in choice:
        assert member.name == member.value
        assert member == member.value and hash(member) == hash(member.value)
        assert str(member) == f"{member}" == member.value and repr(member) == repr(member.value)
        assert json.dumps(member) == json.dumps(member.value)
        assert choice(member.value) is member


@pytest.mark.parametrize(
    ("key", "choice"),
    [
        ("hypergrad.type", HypergradType),
        ("search.precision", Precision),
        ("eval.precision", Precision),
        ("device", Device),
        ("tracking.mode", WandbMode),
        ("eval.learners", EvalLearners),
        ("data.unlabeled", UnlabeledSource),
    ],
)
def test_the_recipes_accept_every_choice_and_name_them_all_when_refusing(key, choice):
    for value in values(choice):
        extra = ["data.dataset=synthetic"] if key == "data.unlabeled" else []
        assert (
            OmegaConf.select(load_config(["preset=tiny", *extra, f"{key}={value}"]), key) == value
        )
    with pytest.raises(ConfigError) as error:
        load_config(["preset=tiny", f"{key}=nonsense"])
    assert str(error.value) == (
        f"{key}='nonsense' is not allowed; choose one of: {', '.join(values(choice))}"
    )


def test_the_search_datasets_are_the_choice():
    with pytest.raises(ConfigError, match="choose one of: cifar100, cifar10, synthetic$"):
        load_config(["preset=tiny", "data.dataset=mnist"])
    assert values(SearchDataset) == ("cifar100", "cifar10", "synthetic")


def _string_tuples(path: Path):
    """Every literal tuple or list of two or more strings in a module, with its line."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) >= 2:
            items = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if len(items) == len(node.elts) and all(isinstance(item, str) for item in items):
                yield node.lineno, set(items)


def test_no_module_repeats_a_choice_list():
    sets = {frozenset(values(choice)): choice.__name__ for choice in CHOICES}
    folders = [ROOT / "sgl_betty", ROOT / "engine", ROOT / "problems"]
    repeated = [
        f"{path.relative_to(ROOT)}:{line} repeats {sets[frozenset(items)]}"
        for folder in folders
        for path in sorted(folder.rglob("*.py"))
        if path.name != "choices.py"
        for line, items in _string_tuples(path)
        if frozenset(items) in sets
    ]
    assert not repeated, "use sgl_betty.choices instead:\n" + "\n".join(repeated)
