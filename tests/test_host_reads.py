"""engine.step() never reads a tensor's value back to the host (on a GPU each read waits for the
device); the metrics and the non-finite flag are read only when asked, once each."""

from pathlib import Path

import pytest
import torch
from test_engine_darts import tiny_batches

from sgl_betty import HypergradConfig, Learner, SGLConfig, build_sgl_engine
from sgl_betty.config import HYPERGRAD_TYPES
from sgl_betty.engine import solve_cg
from sgl_betty.experiment.config import load_config, sgl_config
from sgl_betty.experiment.methods import (
    SEARCH_METHODS,
    search_method,
    search_stages,
    stage_learners,
)
from sgl_betty.host_reads import count_host_reads, host_resident_tensors
from sgl_betty.search_space import Architecture, SearchNetwork

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_counter_sees_python_and_dispatcher_reads_and_skips_host_resident_tensors():
    x = torch.arange(4.0)
    step = torch.tensor(3.0)  # as an optimizer's step counter
    with count_host_reads("cpu", ignore=[step]) as reads:
        x.sum().item()
        bool(x[0] > 1)
        float(x[1])
        int(x[2])
        x.tolist()
        x.cpu()
        x.numpy()
        torch.nonzero(x)  # its output size depends on the values
        x[x > 1]  # so does a boolean mask's
        step.item()
        y = x * 2  # no read
    assert reads.count == 9, reads.events
    assert reads.events[0].startswith("item at test_host_reads.py:")
    del y
    with count_host_reads("cpu") as reads:
        torch.ops.aten._local_scalar_dense(x[0])  # a read from below Python, as C++ makes it
    assert reads.count == 1


def test_on_a_gpu_run_reading_a_cpu_tensor_waits_for_nothing():
    with count_host_reads("cuda") as reads:
        torch.ones(2).sum().item()
    assert reads.count == 0


def small_learners(num):
    """DARTS learners at the smallest size that still has normal and reduction cells."""
    torch.manual_seed(0)

    def net():
        return SearchNetwork(2, 5, 3, steps=1, multiplier=1)

    return [
        Learner(Architecture(steps=1, multiplier=1), net() if num > 1 else None, net())
        for _ in range(num)
    ]


def build(learners, config):
    return build_sgl_engine(
        learners,
        tiny_batches(3),
        tiny_batches(3, seed=1),
        tiny_batches(3, labeled=False, seed=2),
        config,
        train_iters=10,
        device="cpu",
    )


def host_resident(engine):
    """Adam's step counters: on the CPU whatever the device, read by every Adam step."""
    return lambda: host_resident_tensors(problem.optimizer for problem in engine.problems)


CASES = [(kind, False) for kind in HYPERGRAD_TYPES] + [("unrolled", True)]


@pytest.mark.parametrize("num", [1, 2])
@pytest.mark.parametrize(("kind", "exact"), CASES)
def test_engine_steps_never_read_a_value(num, kind, exact):
    hypergrad = HypergradConfig(
        type=kind, unrolled_exact=exact, neumann_iterations=2, cg_iterations=2, cg_alpha=0.1
    )
    engine = build(small_learners(num), SGLConfig(hypergrad=hypergrad))
    with count_host_reads("cpu", ignore=host_resident(engine)) as reads:
        for _ in range(2):
            engine.step()
    assert reads.events == []
    with count_host_reads("cpu", ignore=host_resident(engine)) as reads:
        engine.check_finite()
        metrics = engine.metrics()
    assert reads.count == 2, reads.events  # one read each, for every loss and every metric
    assert len(metrics) > 3 * num


@pytest.mark.parametrize("method", sorted(set(SEARCH_METHODS) - {"darts"}))
def test_every_search_method_steps_without_reading_a_value(method):
    """The methods' per-step settings (DARTS-'s skip weight, P-DARTS's skip dropout) included."""
    cfg = load_config(
        ["preset=tiny", "search.steps=1", f"search.method={method}"], config_dir=CONFIGS
    )
    learners = stage_learners(cfg, 5, search_stages(cfg)[0], total_steps=4)
    engine = build(learners, sgl_config(cfg))
    hook = search_method(method).on_step
    with count_host_reads("cpu", ignore=host_resident(engine)) as reads:
        if hook is not None:
            hook(learners, 0.5)
        engine.step()
    assert reads.events == []


def test_conjugate_gradient_stops_on_the_device_and_exactly():
    torch.manual_seed(0)
    a = torch.randn(3, 3, dtype=torch.float64)
    matrix = a @ a.T + 3 * torch.eye(3, dtype=torch.float64)
    vector = [torch.randn(3, dtype=torch.float64)]

    def hvp(p):
        return [matrix @ p[0]]

    with count_host_reads("cpu") as reads:
        three = solve_cg(hvp, vector, iterations=3)
        ten = solve_cg(hvp, vector, iterations=10)
        zero = solve_cg(hvp, [torch.zeros(3, dtype=torch.float64)], iterations=4)
    assert reads.count == 0
    expected = torch.linalg.solve(matrix, vector[0])
    torch.testing.assert_close(three[0], expected, rtol=1e-12, atol=1e-12)
    # Converged after 3 iterations (3 unknowns): the next 7 change nothing, bit for bit.
    assert torch.equal(ten[0], three[0])
    # A zero right-hand side: zero, not 0/0.
    assert torch.equal(zero[0], torch.zeros(3, dtype=torch.float64))
