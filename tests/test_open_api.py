"""The open library API: build_sgl_problems / engine_from_problems, and the README's example
that adds a fourth level (lambda) to the SGL graph, run as it stands in README.md."""

import re
from pathlib import Path

import pytest
import torch
from test_engine_darts import tiny_batches, tiny_learners

from sgl_betty import HypergradConfig, SGLConfig, build_sgl_engine
from sgl_betty.engine import SGLStages, build_sgl_problems, engine_from_problems
from sgl_betty.problems import ArchStage, VStage, WStage

README = Path(__file__).resolve().parents[1] / "README.md"
LAM = 0.1  # the README's SGLConfig(lam=0.1)


def readme_block(heading: str) -> str:
    """The first ```python block of README.md after ``heading``."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"no python block after {heading!r} in README.md"
    return match.group(1)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


DATA = dict(
    train_loader=lambda: tiny_batches(3),
    val_loader=lambda: tiny_batches(3, seed=1),
    unlabeled_loader=lambda: tiny_batches(3, labeled=False, seed=2),
)


def readme_engine():
    """Run the README's "Adding a level" block on tiny learners; its engine and learners."""
    learners = tiny_learners(2)
    namespace = {"learners": learners} | {name: make() for name, make in DATA.items()}
    exec(compile(readme_block("### Adding a level"), str(README), "exec"), namespace)
    return namespace["engine"], learners


def three_level_engine():
    learners = tiny_learners(2)
    config = SGLConfig(lam=LAM, hypergrad=HypergradConfig(type="darts"))
    data = [make() for make in DATA.values()]
    return build_sgl_engine(learners, *data, config, train_iters=1000, device="cpu"), learners


def weights(learners):
    return [
        p.detach().clone()
        for learner in learners
        for module in (learner.arch, learner.v_net, learner.w_net)
        for p in module.parameters()
    ]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def capture_gradients(problem):
    """The gradient of ``problem``'s parameter before each of its optimizer steps."""
    seen = []
    callback = problem.grad_callback

    def capture():
        seen.append(problem.module.value.grad.detach().clone())
        callback()

    problem.grad_callback = capture
    return seen


def pseudo_label_loss(engine, k, x_u):
    """sum_{j != k} L_soft(W_k(x_u, A_k), softmax(V_j(x_u, A_j))): W_k's loss is
    L_tr + lambda * this, so this is dL_W_k / dlambda."""
    w_stage = engine.problem("w", k)
    logits_u = w_stage.module(x_u, w_stage.architecture())
    total = 0.0
    for j in range(engine.num_learners):
        if j != k:
            peer = engine.problem("v", j)
            target = torch.softmax(peer.module(x_u, peer.architecture()), dim=-1)
            total = total + torch.nn.functional.cross_entropy(logits_u, target)
    return total


def lambda_gradient_reference(engine, radius=0.01):
    """-sum_k (dF/dW_k) . d/dW_k (dL_W_k/dlambda), F = sum_j L_val(W_j, A_j), as the ``darts``
    type takes it (identity inverse Hessian, central differences of radius ``radius``/||dF/dW_k||
    around W_k), written out with forward passes at the weights the fourth level saw."""
    x_val, y_val = engine.batches.get("val")
    validation = sum(
        torch.nn.functional.cross_entropy(w.module(x_val, w.architecture()), y_val)
        for w in (engine.problem("w", k) for k in range(engine.num_learners))
    )
    total = 0.0
    for k in range(engine.num_learners):
        w_stage = engine.problem("w", k)
        params = w_stage.trainable_parameters()
        direction = torch.autograd.grad(validation, params, retain_graph=True)
        eps = radius / torch.sqrt(sum((d * d).sum() for d in direction))
        x_u = w_stage.cur_batch[1]
        saved = [p.detach().clone() for p in params]
        side = {}
        with torch.no_grad():
            for sign in (1, -1):
                for p, w, d in zip(params, saved, direction):
                    p.copy_(w + sign * eps * d)
                side[sign] = pseudo_label_loss(engine, k, x_u)
            for p, w in zip(params, saved):
                p.copy_(w)
        total = total - (side[1] - side[-1]) / (2 * eps)
    return total


@pytest.mark.slow
def test_readme_fourth_level_is_inert_at_learning_rate_zero(float64):
    """With lambda's learning rate 0, V, W and A take exactly the three-level graph's steps
    (float64, bitwise), though lambda receives a nonzero hypergradient every step."""
    engine, learners = readme_engine()
    lam = engine.problem("lam", 0)
    lam.optimizer.param_groups[0]["lr"] = 0.0
    seen = capture_gradients(lam)
    reference, reference_learners = three_level_engine()
    assert_same(weights(learners), weights(reference_learners))
    for _ in range(3):
        engine.step()
        reference.step()
        assert_same(weights(learners), weights(reference_learners))
        for k in range(2):
            assert_same(engine.last_hypergrad[k], reference.last_hypergrad[k])
    assert len(seen) == 3 and all(g.abs() > 0 for g in seen)
    assert lam.module.value.item() == LAM
    assert engine.metrics()["learner0/lam_value"] == LAM


@pytest.mark.slow
def test_readme_fourth_level_learns_lambda(float64):
    """lambda's gradient is the ``darts`` hypergradient through every W_k; lambda moves, and
    from then on W trains with the learned weight."""
    engine, learners = readme_engine()
    lam = engine.problem("lam", 0)
    seen = capture_gradients(lam)
    reference, reference_learners = three_level_engine()

    engine.step()
    reference.step()
    # Lambda steps last: the step it takes changes nothing of this iteration.
    assert_same(weights(learners), weights(reference_learners))
    before = weights(learners)
    expected = lambda_gradient_reference(engine)
    assert_same(weights(learners), before)  # the reference restored every weight it moved
    assert expected.abs() > 1e-3
    torch.testing.assert_close(seen[0], expected.reshape(()), rtol=1e-8, atol=0.0)
    assert lam.module.value.item() != LAM

    engine.step()
    reference.step()
    w_params = [p for learner in learners for p in learner.w_net.parameters()]
    w_reference = [p for learner in reference_learners for p in learner.w_net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(w_params, w_reference))


@pytest.mark.slow
def test_build_sgl_engine_is_build_sgl_problems_then_engine_from_problems(float64):
    learners = tiny_learners(2)
    config = SGLConfig(lam=LAM, hypergrad=HypergradConfig(type="darts"))
    data = {"train": tiny_batches(3), "val": tiny_batches(3, seed=1)}
    data["unlabeled"] = tiny_batches(3, labeled=False, seed=2)
    problems, dependencies = build_sgl_problems(learners, data, config)
    assert [p.name for p in problems] == ["v_0", "v_1", "w_0", "w_1", "arch_0", "arch_1"]
    engine = engine_from_problems(problems, dependencies, train_iters=2, device="cpu")
    engine.run()
    reference, reference_learners = three_level_engine()
    reference.step()
    reference.step()
    assert_same(weights(learners), weights(reference_learners))


def test_stage_classes_must_subclass_the_defaults():
    class NotAStage:
        pass

    assert SGLStages().w is WStage and SGLStages().v is VStage and SGLStages().arch is ArchStage
    with pytest.raises(TypeError, match=r"SGLStages\(w=\.\.\.\) must be a subclass of WStage"):
        SGLStages(w=NotAStage)


def test_added_problem_must_be_an_sgl_stage():
    learners = tiny_learners(2)
    data = {"train": tiny_batches(1), "val": tiny_batches(1), "unlabeled": tiny_batches(1, False)}
    problems, dependencies = build_sgl_problems(learners, data)
    with pytest.raises(TypeError, match="subclasses sgl_betty.problems.SGLStage"):
        engine_from_problems(problems + [object()], dependencies)


def test_data_must_name_its_splits():
    with pytest.raises(ValueError, match="'train' and 'val'"):
        build_sgl_problems(tiny_learners(1), {"training": tiny_batches(1)})
