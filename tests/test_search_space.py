import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgl_betty.genotypes import PRIMITIVES, Genotype, derive_genotype
from sgl_betty.params import count_parameters_m
from sgl_betty.search_space import (
    Architecture,
    ArchWeights,
    Cell,
    MixedOp,
    SearchNetwork,
    reduction_indices,
)
from sgl_betty.search_space.ops import FactorizedReduce, ReLUConvBN

C = 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_mixed_op_is_the_weighted_sum_of_its_ops():
    mixed = MixedOp(C, 1)
    x = torch.randn(2, C, 8, 8)
    weights = F.softmax(torch.randn(len(PRIMITIVES)), dim=0)
    expected = sum(w * op(x) for w, op in zip(weights, mixed.ops, strict=True))
    assert torch.allclose(mixed(x, weights), expected)
    one_hot = torch.zeros(len(PRIMITIVES))
    one_hot[PRIMITIVES.index("skip_connect")] = 1.0
    assert torch.allclose(mixed(x, one_hot), x)


def test_mixed_op_normalises_pooling_outputs_with_parameter_free_batchnorm():
    mixed = MixedOp(C, 1)
    pool = mixed.ops[PRIMITIVES.index("max_pool_3x3")]
    assert isinstance(pool[1], nn.BatchNorm2d) and not pool[1].affine
    out = pool(5.0 + 3.0 * torch.randn(4, C, 8, 8))
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(C), atol=1e-5)
    assert sum(p.numel() for p in pool.parameters()) == 0


def test_mixed_op_rejects_weights_of_the_wrong_length():
    with pytest.raises(ValueError):
        MixedOp(C, 1)(torch.randn(1, C, 4, 4), torch.ones(len(PRIMITIVES) - 1))


def test_normal_cell_keeps_resolution_and_concatenates_its_nodes():
    cell = Cell(4, 4, 3 * C, 3 * C, C, reduction=False, reduction_prev=False)
    assert len(cell.edges) == 14
    s = torch.randn(2, 3 * C, 8, 8)
    weights = F.softmax(torch.randn(14, 8), dim=-1)
    assert cell(s, s, weights).shape == (2, 4 * C, 8, 8)


def test_reduction_cell_halves_resolution_and_strides_only_on_its_inputs():
    cell = Cell(4, 4, 4 * C, 4 * C, 2 * C, reduction=True, reduction_prev=False)
    s = torch.randn(2, 4 * C, 8, 8)
    weights = F.softmax(torch.randn(14, 8), dim=-1)
    assert cell(s, s, weights).shape == (2, 4 * 2 * C, 4, 4)
    # Edge order: node 0 reads inputs 0, 1; node 1 reads 0, 1, 2; ... Only inputs 0 and 1 stride.
    sources = [source for node in range(4) for source in range(2 + node)]
    for edge, source in zip(cell.edges, sources, strict=True):
        skip = edge.ops[PRIMITIVES.index("skip_connect")]
        assert isinstance(skip, FactorizedReduce) == (source < 2)


def test_cell_after_a_reduction_reduces_its_older_input():
    cell = Cell(4, 4, 4 * C, 8 * C, 2 * C, reduction=False, reduction_prev=True)
    assert isinstance(cell.preprocess0, FactorizedReduce)
    assert isinstance(cell.preprocess1, ReLUConvBN)
    s0 = torch.randn(2, 4 * C, 8, 8)
    s1 = torch.randn(2, 8 * C, 4, 4)
    assert cell(s0, s1, F.softmax(torch.randn(14, 8), dim=-1)).shape == (2, 8 * C, 4, 4)


def test_reduction_cells_sit_at_a_third_and_two_thirds():
    assert reduction_indices(8) == (2, 5)
    assert reduction_indices(5) == (1, 3)
    net = SearchNetwork(C, 10, 5)
    assert [cell.reduction for cell in net.cells] == [False, True, False, True, False]
    # Channels double at each reduction: the last cell outputs 4 nodes * 4C channels.
    assert net.classifier.in_features == 4 * 4 * C


def test_search_network_size_matches_the_reference_darts_model():
    # The reference DARTS model_search.Network at C=16, 8 cells, 10 classes has 1.930618M
    # weights besides its architecture parameters.
    net = SearchNetwork(16, 10, 8)
    assert count_parameters_m(net) == pytest.approx(1.930618, abs=1e-12)


def test_search_network_output_shape():
    net = SearchNetwork(C, 10, 5)
    logits = net(torch.randn(2, 3, 16, 16), Architecture()())
    assert logits.shape == (2, 10)


def test_architecture_parameters():
    arch = Architecture()
    assert arch.alpha_normal.shape == arch.alpha_reduce.shape == (14, 8)
    assert {name for name, _ in arch.named_parameters()} == {"alpha_normal", "alpha_reduce"}
    # 1e-3 * randn: 112 draws stay well inside 1e-2.
    assert 0 < arch.alpha_normal.abs().max() < 1e-2
    weights = arch()
    assert isinstance(weights, ArchWeights)
    assert weights.normal is arch.alpha_normal and weights.reduce is arch.alpha_reduce
    assert Architecture(steps=3).alpha_reduce.shape == (9, 8)
    with pytest.raises(ValueError, match="num_ops=5"):
        Architecture(num_ops=5)


def test_network_applies_the_softmax_itself():
    net = SearchNetwork(C, 10, 3).eval()
    x = torch.randn(2, 3, 8, 8)
    alpha_normal, alpha_reduce = torch.randn(14, 8), torch.randn(14, 8)
    logits = net(x, (alpha_normal, alpha_reduce))
    # Softmax ignores a constant added to a row: raw alphas shifted per row give the same net.
    shifted = (alpha_normal + torch.arange(14.0)[:, None], alpha_reduce - 3.0)
    assert torch.allclose(net(x, shifted), logits, atol=1e-6)
    assert torch.allclose(net(x, {"normal": alpha_normal, "reduce": alpha_reduce}), logits)


def test_network_rejects_architecture_weights_of_the_wrong_shape():
    net = SearchNetwork(C, 10, 3)
    with pytest.raises(ValueError, match=r"normal cell have shape \(9, 8\).*needs \(14, 8\)"):
        net(torch.randn(2, 3, 8, 8), Architecture(steps=3)())
    with pytest.raises(TypeError, match="alpha_normal, alpha_reduce"):
        net(torch.randn(2, 3, 8, 8), torch.randn(14, 8))


def test_gradients_reach_network_weights_and_architecture():
    net = SearchNetwork(C, 10, 3)
    arch = Architecture()
    loss = F.cross_entropy(net(torch.randn(4, 3, 8, 8), arch()), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
    assert sum(p.grad.abs().sum() for p in net.parameters()) > 0
    for alpha in (arch.alpha_normal, arch.alpha_reduce):
        assert alpha.grad is not None
        assert torch.isfinite(alpha.grad).all()
        assert torch.count_nonzero(alpha.grad) == alpha.numel()


@pytest.mark.slow
def test_two_networks_sharing_one_architecture_add_their_gradients():
    # V_k and W_k of one learner are two networks with one architecture A_k.
    v_net, w_net = SearchNetwork(C, 10, 3), SearchNetwork(C, 10, 3)
    arch = Architecture()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])

    def arch_grads(loss):
        return torch.autograd.grad(loss, list(arch.parameters()))

    v_grads = arch_grads(F.cross_entropy(v_net(x, arch()), y))
    w_grads = arch_grads(F.cross_entropy(w_net(x, arch()), y))
    both = arch_grads(F.cross_entropy(v_net(x, arch()), y) + F.cross_entropy(w_net(x, arch()), y))
    for total, v_grad, w_grad in zip(both, v_grads, w_grads, strict=True):
        assert torch.allclose(total, v_grad + w_grad, atol=1e-7)
    assert not set(map(id, v_net.parameters())) & set(map(id, arch.parameters()))


def test_architecture_genotype_ranks_edges_by_softmaxed_weights():
    arch = Architecture()
    alpha_normal = torch.zeros(14, 8)
    # Node 1 reads rows 2, 3, 4 (inputs 0, 1, 2). Raw alphas rank input 1 (3.0) above input 0
    # (2.0) above input 2 (1.0). After the softmax the ranking changes:
    #   input 0: sep_conv_3x3 = e^2 / (7 + e^2)         = 0.514
    #   input 1: skip_connect = e^3 / (1 + e^3 + 6 e^2.9) = 0.154
    #   input 2: dil_conv_3x3 = e / (7 + e)             = 0.280
    # so DARTS keeps inputs 0 and 2.
    alpha_normal[2, PRIMITIVES.index("sep_conv_3x3")] = 2.0
    alpha_normal[3, 1:] = 2.9
    alpha_normal[3, PRIMITIVES.index("skip_connect")] = 3.0
    alpha_normal[4, PRIMITIVES.index("dil_conv_3x3")] = 1.0
    with torch.no_grad():
        arch.alpha_normal.copy_(alpha_normal)
        arch.alpha_reduce.zero_()
    # Uniform rows: every tie goes to the lower index, so max_pool_3x3 on inputs 0 and 1.
    uniform = [("max_pool_3x3", 0), ("max_pool_3x3", 1)]
    assert arch.genotype() == Genotype(
        normal=uniform + [("sep_conv_3x3", 0), ("dil_conv_3x3", 2)] + uniform * 2,
        normal_concat=[2, 3, 4, 5],
        reduce=uniform * 4,
        reduce_concat=[2, 3, 4, 5],
    )
    raw_ranking = derive_genotype(alpha_normal, alpha_normal)
    assert raw_ranking.normal[2:4] == [("skip_connect", 1), ("sep_conv_3x3", 0)]


def test_variant_op_set_flows_through_network_and_architecture():
    primitives = ("none", "skip_connect", "sep_conv_3x3")
    net = SearchNetwork(C, 10, 3, primitives=primitives)
    arch = Architecture(primitives=primitives)
    assert all(len(edge.ops) == 3 for cell in net.cells for edge in cell.edges)
    assert net(torch.randn(2, 3, 8, 8), arch()).shape == (2, 10)
    assert {op for op, _ in arch.genotype().normal} <= {"skip_connect", "sep_conv_3x3"}


def test_cell_and_mixed_op_classes_can_be_swapped_by_subclassing():
    class CountingMixedOp(MixedOp):
        calls = 0

        def forward(self, x, weights):
            CountingMixedOp.calls += 1
            return super().forward(x, weights)

    class CountingCell(Cell):
        mixed_op_cls = CountingMixedOp

    class CountingNetwork(SearchNetwork):
        cell_cls = CountingCell

    CountingNetwork(C, 10, 3)(torch.randn(2, 3, 8, 8), Architecture()())
    assert CountingMixedOp.calls == 3 * 14


def test_count_parameters_m_leaves_out_auxiliary_parameters():
    model = nn.Module()
    model.body = nn.Linear(10, 10)  # 110
    model.auxiliary_head = nn.Linear(100, 10)  # left out
    assert count_parameters_m(model) == pytest.approx(110e-6)
