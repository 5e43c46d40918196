import math

import pytest
import torch
import torch.nn.functional as F

from sgl_betty.experiment.methods import set_search_progress
from sgl_betty.genotypes import PRIMITIVES
from sgl_betty.learner import Learner
from sgl_betty.search_space import (
    Architecture,
    AuxiliarySkipMixedOp,
    DartsMinusSearchNetwork,
    SearchNetwork,
    auxiliary_skip_weight,
)
from sgl_betty.search_space.ops import FactorizedReduce


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def one_hot(name: str) -> torch.Tensor:
    weights = torch.zeros(len(PRIMITIVES))
    weights[PRIMITIVES.index(name)] = 1.0
    return weights


def tiny_network(**kwargs) -> DartsMinusSearchNetwork:
    return DartsMinusSearchNetwork(4, 10, 3, steps=2, multiplier=2, **kwargs)


@pytest.mark.parametrize(
    ("decay", "progress", "beta"),
    [
        ("linear", 0.0, 1.0),
        ("linear", 0.5, 0.5),
        ("linear", 1.0, 0.0),
        ("linear", 0.25, 0.75),
        ("cosine", 0.0, 1.0),
        ("cosine", 0.5, 0.5),
        ("cosine", 1.0, 0.0),
        # (1 + cos(pi / 4)) / 2 = (1 + sqrt(2) / 2) / 2: cosine stays above linear early on.
        ("cosine", 0.25, (1 + math.sqrt(2) / 2) / 2),
    ],
)
def test_auxiliary_skip_weight_schedule(decay, progress, beta):
    assert auxiliary_skip_weight(progress, decay) == pytest.approx(beta, abs=1e-12)


def test_schedule_rejects_unknown_decay_and_progress_outside_the_search():
    with pytest.raises(ValueError, match="linear, cosine"):
        auxiliary_skip_weight(0.5, "step")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        auxiliary_skip_weight(1.5)
    with pytest.raises(ValueError, match="linear, cosine"):
        tiny_network(auxiliary_skip_decay="exp")


def test_auxiliary_skip_is_added_outside_the_softmax():
    op = AuxiliarySkipMixedOp(4, 1)
    x = torch.randn(2, 4, 6, 6)
    # `none` on every op weight leaves only the auxiliary skip: beta * x.
    assert torch.allclose(op(x, one_hot("none")), x)
    op.auxiliary_skip_weight = 0.25
    assert torch.allclose(op(x, one_hot("none")), 0.25 * x)
    # The candidate skip_connect and the auxiliary one add up.
    assert torch.allclose(op(x, one_hot("skip_connect")), 1.25 * x)


def test_reduction_edge_has_its_own_factorized_reduce_skip():
    op = AuxiliarySkipMixedOp(4, 2)
    candidate_skip = op.ops[PRIMITIVES.index("skip_connect")]
    assert isinstance(op.auxiliary_skip, FactorizedReduce)
    assert op.auxiliary_skip is not candidate_skip
    x = torch.randn(2, 4, 6, 6)
    op.auxiliary_skip_weight = 0.5
    assert torch.allclose(op(x, one_hot("none")), 0.5 * op.auxiliary_skip(x))


def test_network_sets_beta_on_every_edge_from_search_progress():
    for decay, progress, beta in (("linear", 0.5, 0.5), ("cosine", 0.25, 0.8535533905932737)):
        net = tiny_network(auxiliary_skip_decay=decay)
        assert net.auxiliary_skip_weight == 1.0
        net.set_search_progress(progress)
        ops = net.auxiliary_ops()
        assert len(ops) == 3 * 5  # 3 cells of 5 edges
        assert all(op.auxiliary_skip_weight == pytest.approx(beta) for op in ops)


def test_forward_and_backward_reach_the_architecture_and_the_auxiliary_skip():
    net, arch = tiny_network(), Architecture(steps=2, multiplier=2)
    logits = net(torch.randn(4, 3, 8, 8), arch())
    F.cross_entropy(logits, torch.randint(0, 10, (4,))).backward()
    assert arch.alpha_normal.grad.abs().sum() > 0 and arch.alpha_reduce.grad.abs().sum() > 0
    auxiliary = [op.auxiliary_skip for op in net.auxiliary_ops()]
    reduce_skips = [skip for skip in auxiliary if isinstance(skip, FactorizedReduce)]
    assert reduce_skips and all(skip.conv_even.weight.grad.abs().sum() > 0 for skip in reduce_skips)


def test_with_beta_zero_the_network_is_darts():
    minus, arch = tiny_network(), Architecture(steps=2, multiplier=2)
    darts = SearchNetwork(4, 10, 3, steps=2, multiplier=2)
    loaded = darts.load_state_dict(minus.state_dict(), strict=False)
    assert loaded.missing_keys == []
    assert loaded.unexpected_keys and all("auxiliary_skip" in k for k in loaded.unexpected_keys)
    x = torch.randn(4, 3, 8, 8)
    minus.set_search_progress(1.0)
    assert torch.allclose(minus(x, arch()), darts(x, arch()), atol=1e-6)
    minus.set_search_progress(0.0)
    assert not torch.allclose(minus(x, arch()), darts(x, arch()), atol=1e-3)


def test_architecture_has_no_parameter_for_the_auxiliary_skip():
    arch = Architecture(steps=2, multiplier=2)
    assert [name for name, _ in arch.named_parameters()] == ["alpha_normal", "alpha_reduce"]
    assert arch.alpha_normal.shape == (5, len(PRIMITIVES))


def test_step_hook_updates_v_and_w_networks_and_skips_a_missing_v():
    arch = Architecture(steps=2, multiplier=2)
    pair = Learner(arch=arch, v_net=tiny_network(), w_net=tiny_network())
    alone = Learner(arch=arch, v_net=None, w_net=tiny_network(auxiliary_skip_decay="cosine"))
    set_search_progress([pair, alone], 0.5)
    assert pair.v_net.auxiliary_skip_weight == pair.w_net.auxiliary_skip_weight == 0.5
    assert alone.w_net.auxiliary_skip_weight == pytest.approx(0.5)
    set_search_progress([pair, alone], 0.75)
    assert pair.w_net.auxiliary_skip_weight == pytest.approx(0.25)
    assert alone.w_net.auxiliary_skip_weight == pytest.approx((1 + math.cos(0.75 * math.pi)) / 2)
