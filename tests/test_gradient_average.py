"""Data-parallel gradient averaging: one collective per problem per step, AVG where the backend
has it. Two processes that hold the same data are simulated in one: the all-reduce of a sum
doubles the buffer, so averaging must give back the one-process gradients exactly."""

import pytest
import torch
import torch.distributed as dist
from test_host_reads import build, small_learners

from sgl_betty import HypergradConfig, SGLConfig


class TwoIdenticalProcesses:
    """Stands in for torch.distributed with two processes holding the same gradients."""

    def __init__(self, monkeypatch, backend):
        self.calls = []
        monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
        monkeypatch.setattr(dist, "broadcast", lambda tensor, src, **kwargs: None)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        self.calls.append((op, tensor.numel()))
        if op == dist.ReduceOp.SUM:
            tensor.mul_(2)  # this process's gradients plus the other's, the same
        else:
            assert op == dist.ReduceOp.AVG  # the average of two equal values: unchanged


def arch_after_steps(steps, processes=None):
    learners = small_learners(2)
    engine = build(learners, SGLConfig(hypergrad=HypergradConfig(type="unrolled")))
    if processes is not None:
        engine._world_size = 2
        engine._start_data_parallel()
    for _ in range(steps):
        engine.step()
    return engine, [[p.detach().clone() for p in learner.arch.parameters()] for learner in learners]


@pytest.mark.parametrize(
    ("backend", "op"), [("gloo", dist.ReduceOp.SUM), ("nccl", dist.ReduceOp.AVG)]
)
def test_one_collective_per_problem_per_step_and_the_one_process_result(monkeypatch, backend, op):
    _, alone = arch_after_steps(2)
    processes = TwoIdenticalProcesses(monkeypatch, backend)
    engine, together = arch_after_steps(2, processes)
    problems = engine.problems
    assert len(processes.calls) == 2 * len(problems)  # 6 problems for K = 2, two steps
    sizes = sorted(sum(p.numel() for p in problem.trainable_parameters()) for problem in problems)
    assert sorted(size for _, size in processes.calls) == sorted(sizes * 2)  # each a flat buffer
    assert {called for called, _ in processes.calls} == {op}
    for mine, theirs in zip(alone, together, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert torch.equal(a, b)
