"""Malformed configs and genotypes always get a clean error that names the problem."""

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgl_betty.experiment.config import ConfigError, config_keys, load_config
from sgl_betty.experiment.genotype_source import resolve_eval_genotype
from sgl_betty.genotypes import PRIMITIVES, genotype_from_dict, validate_genotype

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KEYS = config_keys()

values = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            "abc",
            "darts",
            "neumann",
            "cifar10",
            "none",
            "null",
            "true",
            "[1,2]",
            "{a: 1}",
            "-1",
            "1e9",
        ]
    ),
    st.text(string.ascii_letters + string.digits + "_-.", max_size=8),
)
keys = st.one_of(
    st.sampled_from(KEYS), st.text(string.ascii_lowercase + "._", min_size=1, max_size=12)
)


def render(value) -> str:
    return str(value)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=4))
def test_any_override_is_accepted_or_rejected_with_a_config_error(pairs):
    overrides = [f"{key}={render(value)}" for key, value in pairs if "=" not in key]
    try:
        cfg = load_config(["preset=tiny", *overrides], config_dir=CONFIGS)
    except ConfigError as error:
        assert str(error)  # names what is wrong
    else:
        assert cfg.learners >= 1 and cfg.lam >= 0


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("learners=0", "learners"),
        ("lam=-1", "lam"),
        ("search.method=enas", "search.method"),
        ("hypergrad.type=reinforce", "hypergrad.type"),
        ("data.dataset=mnist", "data.dataset"),
        ("device=tpu", "device"),
        ("hypergrad.neumann_iterations=-2", "hypergrad.neumann_iterations"),
        ("lerners=2", "learners"),
        ("tracking.tags={a: 1}", "tracking.tags"),
        ("hypergrad.one_graph_at_a_time=true", "hypergrad.one_graph_at_a_time"),
    ],
)
def test_named_errors(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(["preset=tiny", override], config_dir=CONFIGS)


def test_one_graph_at_a_time_reaches_the_engine_for_an_implicit_type():
    from sgl_betty.experiment.config import sgl_config

    overrides = ["preset=tiny", "hypergrad.type=cg", "hypergrad.one_graph_at_a_time=true"]
    assert sgl_config(load_config(overrides, config_dir=CONFIGS)).hypergrad.one_graph_at_a_time


ops = st.one_of(st.sampled_from(PRIMITIVES), st.text(string.ascii_lowercase + "_", max_size=10))
edges = st.lists(st.tuples(ops, st.integers(-2, 8)), max_size=10)
genotype_dicts = st.fixed_dictionaries(
    {},
    optional={
        "normal": st.one_of(edges, st.integers(), st.text(max_size=3)),
        "normal_concat": st.one_of(st.lists(st.integers(-1, 7), max_size=5), st.none()),
        "reduce": st.one_of(edges, st.none()),
        "reduce_concat": st.lists(st.integers(-1, 7), max_size=5),
    },
)


@settings(max_examples=200, deadline=None)
@given(genotype_dicts)
def test_malformed_genotypes_raise_value_errors_only(data):
    try:
        validate_genotype(genotype_from_dict(data))
    except ValueError as error:
        assert str(error)


@settings(max_examples=100, deadline=None)
@given(st.text(string.printable, max_size=20))
def test_any_genotype_source_string_is_resolved_or_cleanly_rejected(spec):
    try:
        resolve_eval_genotype(spec)
    except (ConfigError, ValueError) as error:
        assert str(error)


@pytest.mark.parametrize(
    "argv",
    [
        ["learners=0"],
        ["preset=nope"],
        ["data.dataset=cifar100", "data.root=/nonexistent/place", "preset=tiny"],
        ["device=cuda", "preset=tiny"]
        if not __import__("torch").cuda.is_available()
        else ["device=tpu"],
        ["--stage", "eval", "preset=tiny", "eval.genotype=NOT_A_GENOTYPE"],
    ],
)
def test_the_recipe_reports_bad_input_without_a_traceback(argv, capsys, tmp_path):
    import sys

    sys.path.insert(0, str(CONFIGS.parent / "benchmarks"))
    from recipe import main

    assert main("cifar100", [*argv, f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "run" / "summary.json").exists()
