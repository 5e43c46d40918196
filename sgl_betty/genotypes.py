"""DARTS genotypes: the discrete cell an architecture search ends with.

A ``Genotype`` lists, node by node, the two incoming edges of each intermediate node of a
normal cell and of a reduction cell as ``(op_name, input_index)`` pairs. Input 0 and 1 are the
outputs of the two previous cells, input ``2 + i`` is intermediate node ``i`` of this cell;
``*_concat`` names the nodes whose outputs are concatenated into the cell's output.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import namedtuple
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import torch

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

GENOTYPE_FIELDS: tuple[str, ...] = Genotype._fields


def num_edges(steps: int) -> int:
    """Edges of a cell with ``steps`` intermediate nodes: node i has 2 + i inputs."""
    return sum(2 + node for node in range(steps))


def derive_genotype(
    weights_normal: Any,
    weights_reduce: Any,
    steps: int = 4,
    multiplier: int = 4,
    primitives: Sequence[str] = PRIMITIVES,
) -> Genotype:
    """The discrete cells DARTS keeps from (softmaxed) architecture weights.

    ``weights_*`` are tensors or arrays of shape ``(num_edges(steps), len(primitives))``, rows in
    cell order (node 0's inputs 0, 1, then node 1's inputs 0, 1, 2, ...). For every node the two
    incoming edges whose strongest non-``none`` op is strongest are kept, each with that op.
    Ties go to the lower index, for edges and for ops. The kept edges of a node are listed
    strongest first, as DARTS lists them.
    """
    primitives = tuple(primitives)
    concat = list(range(2 + steps - multiplier, 2 + steps))
    return Genotype(
        normal=_strongest_edges(weights_normal, steps, primitives, "weights_normal"),
        normal_concat=concat,
        reduce=_strongest_edges(weights_reduce, steps, primitives, "weights_reduce"),
        reduce_concat=list(concat),
    )


def _strongest_edges(
    weights: Any, steps: int, primitives: tuple[str, ...], label: str
) -> list[tuple[str, int]]:
    table = torch.as_tensor(weights).detach().to("cpu", torch.float64)
    expected_shape = (num_edges(steps), len(primitives))
    if tuple(table.shape) != expected_shape:
        raise ValueError(
            f"{label} has shape {tuple(table.shape)}; a cell with {steps} intermediate nodes and "
            f"{len(primitives)} candidate ops needs shape {expected_shape} (one row per edge)"
        )
    rows = table.tolist()
    if any(math.isnan(value) for row in rows for value in row):
        raise ValueError(f"{label} contains NaN: the architecture parameters have diverged")

    # `none` only means "this edge is weak"; it is never kept as an operation.
    candidate_ops = [k for k, name in enumerate(primitives) if name != "none"]
    if not candidate_ops:
        raise ValueError(f"primitives {primitives} has no operation other than 'none'")

    def strongest_op(row: list[float]) -> int:
        # max returns the first maximum, so the lower index wins a tie.
        return max(candidate_ops, key=lambda k: row[k])

    gene: list[tuple[str, int]] = []
    first_row = 0
    for node in range(steps):
        incoming = rows[first_row : first_row + 2 + node]
        # sorted is stable, so the lower input index wins a tie.
        kept_inputs = sorted(
            range(len(incoming)),
            key=lambda source: -incoming[source][strongest_op(incoming[source])],
        )[:2]
        for source in kept_inputs:
            gene.append((primitives[strongest_op(incoming[source])], source))
        first_row += len(incoming)
    return gene


def genotype_to_dict(genotype: Genotype) -> dict[str, list]:
    """JSON-friendly form: lists, no tuples or ranges (the form of the published JSON)."""
    return {
        "normal": [[op, int(index)] for op, index in genotype.normal],
        "normal_concat": [int(node) for node in genotype.normal_concat],
        "reduce": [[op, int(index)] for op, index in genotype.reduce],
        "reduce_concat": [int(node) for node in genotype.reduce_concat],
    }


def genotype_from_dict(data: Mapping[str, Any]) -> Genotype:
    """Inverse of ``genotype_to_dict``; use ``validate_genotype`` to check the result."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a genotype dict is needed, got {type(data).__name__}")
    missing = [field for field in GENOTYPE_FIELDS if field not in data]
    if missing:
        raise ValueError(
            f"genotype dict is missing {missing}; it needs the keys {list(GENOTYPE_FIELDS)}"
        )
    for field in GENOTYPE_FIELDS:
        if isinstance(data[field], str | bytes) or not isinstance(data[field], Sequence):
            kind = (
                "(op_name, input_index) pairs" if field in ("normal", "reduce") else "node indices"
            )
            raise ValueError(f"genotype {field!r} must be a list of {kind}, got {data[field]!r}")
    return Genotype(
        normal=[_edge_tuple(edge) for edge in data["normal"]],
        normal_concat=list(data["normal_concat"]),
        reduce=[_edge_tuple(edge) for edge in data["reduce"]],
        reduce_concat=list(data["reduce_concat"]),
    )


def _edge_tuple(edge: Any) -> Any:
    # Anything that is not a list is left for validate_genotype to name.
    return tuple(edge) if isinstance(edge, list | tuple) else edge


def validate_genotype(
    genotype: Any, steps: int = 4, primitives: Sequence[str] = PRIMITIVES
) -> None:
    """Raises ValueError naming what is wrong with a malformed genotype and how to fix it."""
    if not all(hasattr(genotype, field) for field in GENOTYPE_FIELDS):
        hint = " (use genotype_from_dict for a dict)" if isinstance(genotype, Mapping) else ""
        raise ValueError(
            f"expected a Genotype with fields {list(GENOTYPE_FIELDS)}, "
            f"got {type(genotype).__name__}{hint}"
        )
    for cell in ("normal", "reduce"):
        _validate_edges(getattr(genotype, cell), cell, steps, tuple(primitives))
        _validate_concat(getattr(genotype, f"{cell}_concat"), f"{cell}_concat", steps)


def _validate_edges(edges: Any, cell: str, steps: int, primitives: tuple[str, ...]) -> None:
    if isinstance(edges, str | bytes) or not isinstance(edges, Sequence):
        raise ValueError(
            f"genotype.{cell} must be a list of (op_name, input_index) pairs, "
            f"got {type(edges).__name__}"
        )
    if len(edges) != 2 * steps:
        raise ValueError(
            f"genotype.{cell} has {len(edges)} edges; a cell with {steps} intermediate nodes "
            f"needs exactly {2 * steps} (two incoming edges per node, listed node by node)"
        )
    for position, edge in enumerate(edges):
        where = f"genotype.{cell}[{position}] = {edge!r}"
        if isinstance(edge, str | bytes) or not isinstance(edge, Sequence) or len(edge) != 2:
            raise ValueError(f"{where}: each edge must be an (op_name, input_index) pair")
        op, index = edge
        if op not in primitives:
            raise ValueError(
                f"{where}: unknown operation {op!r}; known operations: {', '.join(primitives)} "
                "(check the spelling, or pass primitives= for a different search space)"
            )
        node = position // 2
        if not _is_int(index) or not 0 <= index < node + 2:
            raise ValueError(
                f"{where}: input index {index!r} is out of range for node {node}, which can read "
                f"inputs 0..{node + 1} (0 and 1 are the two previous cells, 2 + i is node i of "
                "this cell, and a node can only read nodes before it)"
            )


def _validate_concat(concat: Any, field: str, steps: int) -> None:
    valid_nodes = range(2, 2 + steps)
    problem = None
    if isinstance(concat, str | bytes) or not isinstance(concat, Sequence):
        problem = f"must be a list of node indices, got {type(concat).__name__}"
    elif not concat:
        problem = "is empty"
    elif not all(_is_int(node) and node in valid_nodes for node in concat):
        problem = f"must only hold intermediate nodes {valid_nodes.start}..{valid_nodes.stop - 1}"
    elif len(set(concat)) != len(concat):
        problem = "repeats a node"
    if problem:
        raise ValueError(
            f"genotype.{field} = {concat!r} {problem}; use distinct node indices in "
            f"{valid_nodes.start}..{valid_nodes.stop - 1} (DARTS concatenates all of them: "
            f"{list(valid_nodes)})"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _load_published() -> dict[str, Genotype]:
    text = resources.files("sgl_betty").joinpath("assets/published_genotypes.json").read_text()
    return {name: genotype_from_dict(data) for name, data in json.loads(text).items()}


PUBLISHED: dict[str, Genotype] = _load_published()
"""Genotypes of the published cells, by name: DARTS_V1, DARTS_V2, PC_DARTS_cifar,
PC_DARTS_image, PDARTS."""


def resolve_genotype(spec: Genotype | Mapping[str, Any] | str) -> Genotype:
    """A Genotype from a Genotype, its dict form, or the name of a published genotype."""
    if isinstance(spec, str):
        if spec not in PUBLISHED:
            raise ValueError(
                f"no published genotype named {spec!r}; published: {', '.join(PUBLISHED)}"
            )
        return PUBLISHED[spec]
    if isinstance(spec, Mapping):
        return genotype_from_dict(spec)
    return spec
