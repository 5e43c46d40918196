import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sgl_betty
from sgl_betty.genotypes import (
    PRIMITIVES,
    PUBLISHED,
    Genotype,
    derive_genotype,
    genotype_from_dict,
    genotype_to_dict,
    num_edges,
    resolve_genotype,
    validate_genotype,
)

PUBLISHED_JSON = Path(sgl_betty.__file__).parent / "assets" / "published_genotypes.json"


def row(default: float = 0.01, **weights: float) -> list[float]:
    """One edge's weights: the named ops get the given weight, every other op ``default``."""
    return [weights.get(name, default) for name in PRIMITIVES]


# Hand-built normal-cell weights, one row per edge, in cell order. The expected genotype below
# is derived by hand from the DARTS rule (comments give each node's reasoning).
HAND_NORMAL = [
    # node 0, inputs 0 and 1: both kept (a node has only these two); `none` is strongest on
    # edge 0 but is never chosen, so edge 0 keeps sep_conv_3x3.
    row(none=0.6, sep_conv_3x3=0.3),
    row(skip_connect=0.2),
    # node 1: input 0's best non-none op is weak (0.05) although its `none` is 0.9, so inputs
    # 2 (0.5) and 1 (0.4) are kept, strongest first.
    row(none=0.9, max_pool_3x3=0.05),
    row(dil_conv_3x3=0.4),
    row(sep_conv_5x5=0.5),
    # node 2: three inputs tie at 0.3; the two lowest indices win.
    row(avg_pool_3x3=0.3),
    row(avg_pool_3x3=0.3),
    row(avg_pool_3x3=0.3),
    row(dil_conv_5x5=0.1),
    # node 3: input 3 (0.7) and input 2 (0.2, where sep_conv_3x3 and dil_conv_3x3 tie and the
    # lower op index wins); input 4 has `none` at 0.95 and only 0.01 elsewhere.
    row(skip_connect=0.1),
    row(sep_conv_5x5=0.1),
    row(sep_conv_3x3=0.2, dil_conv_3x3=0.2),
    row(max_pool_3x3=0.7),
    row(none=0.95),
]
HAND_NORMAL_GENE = [
    ("sep_conv_3x3", 0),
    ("skip_connect", 1),
    ("sep_conv_5x5", 2),
    ("dil_conv_3x3", 1),
    ("avg_pool_3x3", 0),
    ("avg_pool_3x3", 1),
    ("max_pool_3x3", 3),
    ("sep_conv_3x3", 2),
]

# Reduction cell: `none` is the strongest op on every edge; skip_connect grows with the input
# index, so every node keeps its two latest inputs, latest first.
HAND_REDUCE = [
    row(default=0.001, none=0.9, skip_connect=0.01 * (source + 1))
    for node in range(4)
    for source in range(2 + node)
]
HAND_REDUCE_GENE = [("skip_connect", source) for node in range(4) for source in (node + 1, node)]


def test_primitives_are_the_darts_ops_in_darts_order():
    assert PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    )


def test_num_edges():
    assert num_edges(4) == 14
    assert num_edges(3) == 9


def test_derive_genotype_on_hand_built_weights():
    genotype = derive_genotype(torch.tensor(HAND_NORMAL), torch.tensor(HAND_REDUCE))
    assert genotype == Genotype(
        normal=HAND_NORMAL_GENE,
        normal_concat=[2, 3, 4, 5],
        reduce=HAND_REDUCE_GENE,
        reduce_concat=[2, 3, 4, 5],
    )


def test_derive_genotype_accepts_arrays_lists_and_tensors_that_require_grad():
    expected = derive_genotype(torch.tensor(HAND_NORMAL), torch.tensor(HAND_REDUCE))
    assert derive_genotype(np.array(HAND_NORMAL), HAND_REDUCE) == expected
    with_grad = torch.tensor(HAND_NORMAL, requires_grad=True)
    assert derive_genotype(with_grad, torch.tensor(HAND_REDUCE)) == expected


def test_derive_genotype_multiplier_sets_concat():
    genotype = derive_genotype(HAND_NORMAL, HAND_REDUCE, multiplier=2)
    assert genotype.normal_concat == [4, 5]
    assert genotype.reduce_concat == [4, 5]


def test_derive_genotype_with_a_smaller_op_set_and_fewer_steps():
    # P-DARTS's last stage: three ops and no `none`; two nodes here (5 edges).
    primitives = ["skip_connect", "sep_conv_3x3", "dil_conv_5x5"]
    weights = [
        [0.5, 0.3, 0.2],
        [0.1, 0.1, 0.8],
        [0.2, 0.7, 0.1],
        [0.6, 0.2, 0.2],
        [0.3, 0.3, 0.4],
    ]
    genotype = derive_genotype(weights, weights, steps=2, multiplier=2, primitives=primitives)
    assert genotype.normal == [
        ("dil_conv_5x5", 1),
        ("skip_connect", 0),
        ("sep_conv_3x3", 0),
        ("skip_connect", 1),
    ]
    assert genotype.normal_concat == [2, 3]


def test_derive_genotype_rejects_a_wrong_shape_and_nan():
    with pytest.raises(ValueError, match=r"shape \(14, 7\).*needs shape \(14, 8\)"):
        derive_genotype(torch.zeros(14, 7), torch.zeros(14, 8))
    nan_weights = torch.zeros(14, 8)
    nan_weights[3, 2] = float("nan")
    with pytest.raises(ValueError, match="weights_reduce contains NaN"):
        derive_genotype(torch.zeros(14, 8), nan_weights)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, (14, 8), elements=st.floats(0.0, 1.0)),
    arrays(np.float64, (14, 8), elements=st.floats(0.0, 1.0)),
)
def test_derived_genotype_keeps_the_strongest_edges_and_never_none(normal, reduce):
    genotype = derive_genotype(normal, reduce)
    validate_genotype(genotype)
    for weights, gene in ((normal, genotype.normal), (reduce, genotype.reduce)):
        first_row = 0
        for node in range(4):
            strength = weights[first_row : first_row + 2 + node, 1:].max(axis=1)
            kept = [gene[2 * node][1], gene[2 * node + 1][1]]
            assert kept[0] != kept[1]
            assert strength[kept[0]] >= strength[kept[1]]
            dropped = set(range(2 + node)) - set(kept)
            assert all(strength[kept[1]] >= strength[source] for source in dropped)
            for op, source in gene[2 * node : 2 * node + 2]:
                assert op != "none"
                op_weight = weights[first_row + source, PRIMITIVES.index(op)]
                assert op_weight == strength[source]
            first_row += 2 + node


def test_published_equals_the_json_entry_for_entry():
    raw = json.loads(PUBLISHED_JSON.read_text())
    assert (
        set(PUBLISHED)
        == set(raw)
        == {
            "DARTS_V1",
            "DARTS_V2",
            "PC_DARTS_cifar",
            "PC_DARTS_image",
            "PDARTS",
        }
    )
    for name, genotype in PUBLISHED.items():
        assert genotype_to_dict(genotype) == raw[name]
        validate_genotype(genotype)


def test_published_darts_v2_is_the_cell_of_the_darts_paper():
    darts_v2 = PUBLISHED["DARTS_V2"]
    assert darts_v2.normal[:2] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]
    assert darts_v2.normal[-1] == ("dil_conv_3x3", 2)
    assert {op for op, _ in darts_v2.reduce} == {"max_pool_3x3", "skip_connect"}


def test_genotype_dict_round_trips_through_json():
    genotype = derive_genotype(HAND_NORMAL, HAND_REDUCE)
    as_json = json.dumps(genotype_to_dict(genotype))
    assert genotype_from_dict(json.loads(as_json)) == genotype
    # A range-valued concat (as DARTS writes genotypes) still serialises to a list.
    ranged = genotype._replace(normal_concat=range(2, 6))
    assert genotype_to_dict(ranged)["normal_concat"] == [2, 3, 4, 5]


def test_genotype_from_dict_names_missing_keys():
    with pytest.raises(ValueError, match=r"missing \['reduce_concat'\]"):
        genotype_from_dict({"normal": [], "normal_concat": [], "reduce": []})


def test_resolve_genotype():
    assert resolve_genotype("PDARTS") is PUBLISHED["PDARTS"]
    assert resolve_genotype(genotype_to_dict(PUBLISHED["PDARTS"])) == PUBLISHED["PDARTS"]
    with pytest.raises(ValueError, match="DARTS_V3.*DARTS_V2"):
        resolve_genotype("DARTS_V3")


def replace_edge(genotype: Genotype, cell: str, position: int, edge) -> Genotype:
    edges = list(getattr(genotype, cell))
    edges[position] = edge
    return genotype._replace(**{cell: edges})


DARTS_V2 = PUBLISHED["DARTS_V2"]


@pytest.mark.parametrize(
    "genotype, message",
    [
        (
            replace_edge(DARTS_V2, "normal", 3, ("sep_conv_4x4", 1)),
            r"genotype.normal\[3\].*unknown operation 'sep_conv_4x4'; known operations: none, ",
        ),
        (
            # node 2 (positions 4 and 5) can read inputs 0..3 only
            replace_edge(DARTS_V2, "reduce", 5, ("skip_connect", 4)),
            r"genotype.reduce\[5\].*input index 4 is out of range for node 2.*inputs 0..3",
        ),
        (
            replace_edge(DARTS_V2, "normal", 0, ("sep_conv_3x3", -1)),
            r"input index -1 is out of range for node 0",
        ),
        (
            DARTS_V2._replace(normal=DARTS_V2.normal[:7]),
            r"genotype.normal has 7 edges.*needs exactly 8",
        ),
        (
            replace_edge(DARTS_V2, "normal", 2, "sep_conv_3x3"),
            r"genotype.normal\[2\].*\(op_name, input_index\) pair",
        ),
        (DARTS_V2._replace(normal_concat=[2, 3, 4, 6]), r"normal_concat.*2..5"),
        (DARTS_V2._replace(reduce_concat=[2, 2, 3]), r"reduce_concat.*repeats a node"),
        (DARTS_V2._replace(reduce_concat=[]), r"reduce_concat = \[\] is empty"),
        (genotype_to_dict(DARTS_V2), r"got dict \(use genotype_from_dict"),
    ],
)
def test_validate_genotype_names_what_is_wrong(genotype, message):
    with pytest.raises(ValueError, match=message):
        validate_genotype(genotype)


def test_validate_genotype_checks_against_the_given_steps_and_ops():
    with pytest.raises(ValueError, match="3 intermediate nodes needs exactly 6"):
        validate_genotype(DARTS_V2, steps=3)
    with pytest.raises(ValueError, match="unknown operation 'sep_conv_3x3'"):
        validate_genotype(DARTS_V2, primitives=["skip_connect", "max_pool_3x3"])
