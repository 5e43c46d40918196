"""The network and architecture contracts (sgl_betty.contracts): the project's search spaces
keep them, and a Learner built from modules that do not is refused with the fix in the message."""

import pytest
import torch
from torch import nn

from sgl_betty import Learner
from sgl_betty.contracts import (
    ArchitectureModule,
    NormalizedArchitecture,
    ProgressAwareNetwork,
    SearchableNetwork,
)
from sgl_betty.search_space import (
    Architecture,
    DartsMinusSearchNetwork,
    PCDartsArchitecture,
    PCDartsSearchNetwork,
    PDartsArchitecture,
    PDartsSearchNetwork,
    SearchNetwork,
)

SPACES = {
    "darts": (lambda: SearchNetwork(4, 5, 3, steps=1, multiplier=1), Architecture),
    "pc_darts": (
        lambda: PCDartsSearchNetwork(4, 5, 3, steps=1, multiplier=1, partial_channels=2),
        PCDartsArchitecture,
    ),
    "p_darts": (lambda: PDartsSearchNetwork(4, 5, 3, steps=1, multiplier=1), PDartsArchitecture),
    "darts_minus": (
        lambda: DartsMinusSearchNetwork(4, 5, 3, steps=1, multiplier=1),
        Architecture,
    ),
}


@pytest.mark.parametrize("space", sorted(SPACES))
def test_search_spaces_keep_the_contracts(space):
    make_net, make_arch = SPACES[space]
    net, arch = make_net(), make_arch(steps=1, multiplier=1)
    assert isinstance(net, SearchableNetwork)
    assert isinstance(arch, ArchitectureModule)
    logits = net(torch.randn(2, 3, 8, 8), arch())  # the call the contract describes
    assert logits.shape == (2, 5)
    Learner(arch=arch, v_net=make_net(), w_net=net)  # the checks accept it
    # The optional contracts: exactly where the method changes over the search / normalises.
    assert isinstance(net, ProgressAwareNetwork) == (space in ("p_darts", "darts_minus"))
    assert isinstance(arch, NormalizedArchitecture) == (space == "pc_darts")


class PlainNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x)


class Weights(nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(3))

    def forward(self):
        return self.alpha


class NoWeights(nn.Module):
    def forward(self):
        return torch.zeros(3)


class ConditionedNetwork(PlainNetwork):
    def forward(self, x, arch_weights):
        return self.linear(x * arch_weights)


def test_a_network_without_the_arch_weights_argument_is_refused():
    with pytest.raises(TypeError) as error:
        Learner(arch=Weights(), v_net=None, w_net=PlainNetwork())
    message = str(error.value)
    assert "Learner.w_net" in message and "net(x, arch_weights)" in message
    assert "PlainNetwork.forward(x)" in message and "second argument" in message
    with pytest.raises(TypeError, match="Learner.v_net"):
        Learner(arch=Weights(), v_net=PlainNetwork(), w_net=ConditionedNetwork())


def test_an_architecture_that_needs_arguments_or_has_no_parameters_is_refused():
    with pytest.raises(TypeError, match=r"Learner.arch: SGL calls the architecture as arch\(\)"):
        Learner(arch=PlainNetwork(), v_net=None, w_net=ConditionedNetwork())
    with pytest.raises(TypeError, match="has no parameters"):
        Learner(arch=NoWeights(), v_net=None, w_net=ConditionedNetwork())


def test_a_network_of_ones_own_that_keeps_the_contracts_is_accepted():
    learner = Learner(arch=Weights(), v_net=ConditionedNetwork(), w_net=ConditionedNetwork())
    assert isinstance(learner.w_net, SearchableNetwork)
    assert learner.w_net(torch.ones(1, 3), learner.arch()).shape == (1, 2)
