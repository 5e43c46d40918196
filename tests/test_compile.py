"""SGLConfig(compile=True) / search.compile: the V and W networks compiled for the passes that
differentiate once, the eager networks for the hypergradients' re-evaluations; the values a
search changes every step are buffers, so nothing recompiles.

Inductor compiles the supernet in minutes on a CPU, so these tests use TorchDynamo's "eager"
backend (the same graph capture, guards and recompilations, the captured graph run as is) and
one test "aot_eager" (AOTAutograd's forward and backward graphs, buffers mutated functionally);
``make gpu-check`` runs nothing compiled."""

import pytest
import torch
import torch._dynamo
from test_host_reads import CONFIGS, build, small_learners

from sgl_betty import HypergradConfig, SGLConfig
from sgl_betty.evaluation import NetworkCIFAR
from sgl_betty.experiment.config import load_config, sgl_config
from sgl_betty.search_space import (
    Architecture,
    DartsMinusSearchNetwork,
    PDartsArchitecture,
    PDartsSearchNetwork,
)
from sgl_betty.search_space.p_darts import SkipDropoutSchedule


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class CallsWhileDescending:
    """Stands in for a stage's compiled network and records, per call, whether that stage was
    in its own descent step."""

    def __init__(self, stage):
        self.stage, self.compiled, self.calls = stage, stage.compiled_module, []

    def __call__(self, *args):
        self.calls.append(self.stage.descending)
        return self.compiled(*args)


def architectures(learners):
    return [torch.cat([p.detach().flatten() for p in lr.arch.parameters()]) for lr in learners]


def search(kind, steps, backend=None):
    """Architectures after ``steps`` K = 2 steps, and per V/W stage its compiled calls."""
    learners = small_learners(2)
    config = SGLConfig(
        hypergrad=HypergradConfig(type=kind), compile=backend is not None, compile_backend=backend
    )
    engine = build(learners, config)
    spies = {}
    if backend is not None:
        for stage in engine.problems:
            if stage.role in ("v", "w"):
                spies[stage.name] = stage.compiled_module = CallsWhileDescending(stage)
    engine.step()  # compiles
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(steps - 1):
            engine.step()
    return architectures(learners), spies


def test_first_order_compiled_descent_and_validation_give_the_eager_search():
    eager, _ = search("first_order", 3)
    compiled, spies = search("first_order", 3, backend="aot_eager")
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # Per step: V its descent; W its descent on D_tr and D_u, and the validation pass.
    assert spies["v_0"].calls == [True] * 3
    assert spies["w_0"].calls == [True, True, False] * 3


def test_second_order_solvers_stay_eager():
    eager, _ = search("unrolled", 2)
    compiled, spies = search("unrolled", 2, backend="eager")
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    # Only the descent steps; the validation pass at W' and every mixed product are eager.
    assert spies["v_0"].calls == [True] * 2
    assert spies["w_1"].calls == [True, True] * 2


def train_calls(network, arch, set_value, values):
    compiled = torch.compile(network, backend="eager")
    x = torch.randn(2, 3, 8, 8)
    for index, value in enumerate(values):
        set_value(value)
        patch = torch._dynamo.config.patch(error_on_recompile=index > 0)
        with patch:
            compiled(x, arch()).sum().backward()


def test_darts_minus_beta_is_a_buffer_and_changing_it_does_not_recompile():
    network = DartsMinusSearchNetwork(2, 5, 3, steps=1, multiplier=1)
    betas = [1.0, 0.9, 0.75, 0.5]
    train_calls(
        network, Architecture(steps=1, multiplier=1), network.set_auxiliary_skip_weight, betas
    )
    buffers = [op.beta for op in network.auxiliary_ops()]
    assert buffers and all(b.item() == pytest.approx(0.5) for b in buffers)
    assert "beta" not in " ".join(network.state_dict())  # checkpoints as before


def test_p_darts_skip_dropout_rate_is_a_buffer_and_changing_it_does_not_recompile():
    schedule = SkipDropoutSchedule(0.3, 5, 2)
    network = PDartsSearchNetwork(2, 5, 3, steps=1, multiplier=1, skip_dropout_schedule=schedule)
    rates = [0.3, 0.25, 0.1, 0.05]
    train_calls(network, PDartsArchitecture(steps=1, multiplier=1), network.set_skip_dropout, rates)
    buffers = [dropout.rate for dropout in network.skip_dropouts()]
    assert buffers and all(b.item() == pytest.approx(0.05) for b in buffers)


def test_the_recipe_switch_reaches_the_engine():
    cfg = load_config(["preset=tiny", "search.compile=true"], config_dir=CONFIGS)
    assert sgl_config(cfg).compile is True
    assert load_config(["preset=tiny"], config_dir=CONFIGS).search.compile is False


def test_drop_path_rate_is_a_buffer_and_changing_it_does_not_recompile():
    network = NetworkCIFAR(4, 10, 3, False, "DARTS_V2").train()
    compiled = torch.compile(network, backend="eager")
    x = torch.randn(2, 3, 8, 8)
    for index, rate in enumerate([0.05, 0.1, 0.15]):  # per epoch, as the trainer sets it
        network.drop_path_prob = rate
        with torch._dynamo.config.patch(error_on_recompile=index > 0):
            compiled(x)[0].sum().backward()
    assert network.drop_path_rate.item() == pytest.approx(0.15)
    assert "drop_path_rate" not in network.state_dict()
