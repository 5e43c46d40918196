import math

import pytest
import torch
import torch.nn.functional as F

from sgl_betty.genotypes import PRIMITIVES
from sgl_betty.search_space import (
    PartialChannelMixedOp,
    PCDartsArchitecture,
    PCDartsArchWeights,
    PCDartsCell,
    PCDartsSearchNetwork,
    channel_shuffle,
    normalize_edge_weights,
    pc_darts_genotype,
)
from sgl_betty.search_space.pc_darts import PCDartsCellWeights

# 8 channels in 4 groups of 2: the reference's view(b, 4, 2, h, w).transpose(1, 2) sends input
# channel g * 2 + i to output i * 4 + g, so output o reads input (o % 4) * 2 + o // 4.
SHUFFLE_8_BY_4 = [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def one_hot(name: str) -> torch.Tensor:
    weights = torch.zeros(len(PRIMITIVES))
    weights[PRIMITIVES.index(name)] = 1.0
    return weights


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(8.0).view(1, 8, 1, 1).expand(2, 8, 3, 3)
    shuffled = channel_shuffle(x, 4)
    assert shuffled[0, :, 0, 0].tolist() == [float(c) for c in SHUFFLE_8_BY_4]
    assert torch.equal(shuffled, x[:, SHUFFLE_8_BY_4])


def test_edge_weights_are_softmaxed_over_each_nodes_incoming_edges():
    # steps=2: node 0 reads edges 0, 1; node 1 reads edges 2, 3, 4.
    betas = torch.tensor([0.0, math.log(3.0), 0.0, 0.0, math.log(2.0)])
    expected = torch.tensor([0.25, 0.75, 0.25, 0.25, 0.5])
    assert torch.allclose(normalize_edge_weights(betas, steps=2), expected)
    with pytest.raises(ValueError, match="one per edge"):
        normalize_edge_weights(torch.zeros(4), steps=2)


def test_partial_channel_op_runs_its_ops_on_a_quarter_of_the_channels():
    op = PartialChannelMixedOp(8, 1, partial_channels=4)
    sep_conv = op.ops[PRIMITIVES.index("sep_conv_3x3")]
    assert sep_conv[0][1].in_channels == 2  # its first depthwise conv sees 8 / 4 channels
    x = torch.randn(2, 8, 6, 6)
    # skip_connect passes the active quarter unchanged: the output is x shuffled.
    assert torch.allclose(op(x, one_hot("skip_connect")), x[:, SHUFFLE_8_BY_4])
    # `none` zeroes the active channels 0 and 1, which the shuffle puts at 0 and 4.
    out = op(x, one_hot("none"))
    assert torch.count_nonzero(out[:, [0, 4]]) == 0
    assert torch.allclose(out[:, [1, 2, 3, 5, 6, 7]], x[:, [2, 4, 6, 3, 5, 7]])


def test_reduction_edge_max_pools_the_bypassed_channels():
    op = PartialChannelMixedOp(8, 2, partial_channels=4)
    x = torch.randn(2, 8, 6, 6)
    out = op(x, one_hot("none"))
    assert out.shape == (2, 8, 3, 3)
    bypass = x[:, 2:].reshape(2, 6, 3, 2, 3, 2).amax(dim=(3, 5))  # 2x2 max pool, stride 2
    assert torch.allclose(out[:, [1, 2, 3, 5, 6, 7]], bypass[:, [0, 2, 4, 1, 3, 5]])


def test_partial_channels_must_divide_the_channels():
    with pytest.raises(ValueError, match="pc_partial_channels"):
        PartialChannelMixedOp(6, 1, partial_channels=4)
    op = PartialChannelMixedOp(6, 1, partial_channels=2)  # configurable: 1/2 of the channels
    assert op.ops[PRIMITIVES.index("sep_conv_3x3")][0][1].in_channels == 3
    # One part: all channels through the ops, nothing bypassed or shuffled.
    whole = PartialChannelMixedOp(4, 2, partial_channels=1)
    x = torch.randn(2, 4, 6, 6)
    weights = F.softmax(torch.randn(len(PRIMITIVES)), dim=0)
    expected = sum(w * op(x) for w, op in zip(weights, whole.ops, strict=True))
    assert torch.allclose(whole(x, weights), expected)


def test_cell_scales_every_edge_by_its_normalized_beta():
    cell = PCDartsCell(2, 2, 8, 8, 8, reduction=False, reduction_prev=False, partial_channels=4)
    s0, s1 = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    edge_weights = torch.tensor([0.3, 0.7, 0.2, 0.5, 0.3])
    weights = PCDartsCellWeights(one_hot("skip_connect").expand(5, -1), edge_weights)
    out = cell(s0, s1, weights)
    # With skip_connect on every edge an edge is the shuffle of its input.
    p0, p1 = cell.preprocess0(s0), cell.preprocess1(s1)
    node0 = 0.3 * p0[:, SHUFFLE_8_BY_4] + 0.7 * p1[:, SHUFFLE_8_BY_4]
    node1 = (
        0.2 * p0[:, SHUFFLE_8_BY_4] + 0.5 * p1[:, SHUFFLE_8_BY_4] + 0.3 * node0[:, SHUFFLE_8_BY_4]
    )
    assert torch.allclose(out, torch.cat([node0, node1], dim=1), atol=1e-6)


def test_architecture_holds_alphas_and_betas_and_returns_all_four():
    arch = PCDartsArchitecture(steps=2, multiplier=2)
    names = [name for name, _ in arch.named_parameters()]
    assert names == ["alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce"]
    weights = arch()
    assert isinstance(weights, PCDartsArchWeights)
    assert weights.alpha_normal.shape == (5, len(PRIMITIVES))
    assert weights.beta_reduce.shape == (5,)
    assert 0 < weights.beta_normal.abs().max() < 0.01  # 1e-3 * randn, as the reference


def test_search_network_forward_and_backward_reach_every_parameter():
    net = PCDartsSearchNetwork(8, 10, 3, steps=2, multiplier=2, partial_channels=4)
    arch = PCDartsArchitecture(steps=2, multiplier=2)
    logits = net(torch.randn(4, 3, 8, 8), arch())
    assert logits.shape == (4, 10)
    F.cross_entropy(logits, torch.randint(0, 10, (4,))).backward()
    for name, param in arch.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    with pytest.raises(TypeError, match="PCDartsArchitecture"):
        net(torch.randn(1, 3, 8, 8), (arch.alpha_normal, arch.alpha_reduce))


def probability_rows(rows: list[dict[str, float]]) -> torch.Tensor:
    """Softmax rows, one per edge: the named ops get their probability, the others share the
    rest evenly."""
    table = []
    for named in rows:
        rest = (1 - sum(named.values())) / (len(PRIMITIVES) - len(named))
        table.append([named.get(name, rest) for name in PRIMITIVES])
    return torch.tensor(table)


def test_genotype_ranks_edges_by_beta_weighted_op_weights():
    # softmax(alpha): edge 4's strongest op is `none`, so its best real op is max_pool_3x3.
    probabilities = probability_rows(
        [
            {"sep_conv_5x5": 0.7},
            {"skip_connect": 0.9},
            {"sep_conv_3x3": 0.6},
            {"dil_conv_3x3": 0.5},
            {"none": 0.45, "max_pool_3x3": 0.4},
        ]
    )
    # Normalized betas: node 0 (0.8, 0.2); node 1 (0.2, 0.3, 0.5).
    edge_weights = torch.tensor([0.8, 0.2, 0.2, 0.3, 0.5])
    # Weighted: node 0 has 0.7 * 0.8 = 0.56 against 0.9 * 0.2 = 0.18, so sep_conv_5x5 comes
    # first; node 1 has 0.6 * 0.2 = 0.12, 0.5 * 0.3 = 0.15, 0.4 * 0.5 = 0.2: edges 4 and 3 win,
    # where the unweighted rule would keep edges 2 and 3.
    expected_normal = [
        ("sep_conv_5x5", 0),
        ("skip_connect", 1),
        ("max_pool_3x3", 2),
        ("dil_conv_3x3", 1),
    ]

    arch = PCDartsArchitecture(steps=2, multiplier=2)
    with torch.no_grad():
        arch.alpha_normal.copy_(probabilities.log())
        arch.alpha_reduce.copy_(probabilities.log())
        arch.beta_normal.copy_(edge_weights.log())
        arch.beta_reduce.zero_()  # uniform per node: the unweighted DARTS ranking
    genotype = arch.genotype()
    assert genotype.normal == expected_normal
    assert genotype.reduce == [
        ("skip_connect", 1),
        ("sep_conv_5x5", 0),
        ("sep_conv_3x3", 0),
        ("dil_conv_3x3", 1),
    ]
    assert genotype.normal_concat == [2, 3]
    assert pc_darts_genotype(*arch(), steps=2, multiplier=2) == genotype
