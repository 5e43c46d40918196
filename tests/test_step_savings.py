"""Fewer passes and less memory, the same numbers: each saving against the computation it
replaced, kept here (float64)."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from betty.hypergradient import jvp_fn_mapping

from sgl_betty import HypergradConfig, Learner, SGLConfig, build_sgl_engine
from sgl_betty.engine.hypergradient import OneSweep, ProblemUnion, _add
from sgl_betty.genotypes import PRIMITIVES
from sgl_betty.search_space import (
    Architecture,
    DartsMinusSearchNetwork,
    MixedOp,
    PCDartsArchitecture,
    PCDartsSearchNetwork,
    PDartsArchitecture,
    PDartsSearchNetwork,
    SearchNetwork,
)
from sgl_betty.search_space.ops import Zero
from sgl_betty.search_space.second_order_conv import second_order_pass

NODES = 2


class SavedTensorPeak:
    """The peak bytes of the activations autograd keeps for backward passes (tensors saved by
    the graphs built inside, each storage counted once, parameters not counted)."""

    def __init__(self):
        self.live: dict[int, list] = {}  # storage pointer -> [bytes, references]
        self.bytes = self.peak = 0

    def _pack(self, tensor):
        if isinstance(tensor, torch.nn.Parameter):
            return tensor
        return _Saved(self, tensor)

    def _unpack(self, packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    @contextmanager
    def measuring(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield self


class _Saved:
    def __init__(self, owner: SavedTensorPeak, tensor: torch.Tensor):
        # Detached: a tensor a node saves of its own output would otherwise hold that node
        # (tensor -> grad_fn -> this object -> tensor), a cycle through C++ that no collector
        # frees, so a graph dropped without a backward would stay counted.
        self.owner, self.tensor = owner, tensor.detach()
        self.key = tensor.untyped_storage().data_ptr()
        entry = owner.live.setdefault(self.key, [tensor.untyped_storage().nbytes(), 0])
        if entry[1] == 0:
            owner.bytes += entry[0]
            owner.peak = max(owner.peak, owner.bytes)
        entry[1] += 1

    def __del__(self):
        entry = self.owner.live[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            self.owner.bytes -= entry[0]
            del self.owner.live[self.key]


# --- the mixed op skips `none` ------------------------------------------------------------


def all_ops_forward(self, x, weights):
    """The mixed op before `none` was skipped: every op, `none`'s x * 0 included."""
    return sum(weight * op(x) for weight, op in zip(weights, self.ops, strict=True))


def space(name):
    torch.manual_seed(0)
    if name == "pc_darts":
        net = PCDartsSearchNetwork(8, 5, 3, steps=NODES, multiplier=NODES, partial_channels=2)
        arch = PCDartsArchitecture(steps=NODES, multiplier=NODES, init_scale=0.5)
    elif name == "p_darts":
        net = PDartsSearchNetwork(4, 5, 3, steps=NODES, multiplier=NODES)
        net.set_skip_dropout(0.3)
        arch = PDartsArchitecture(steps=NODES, multiplier=NODES, init_scale=0.5)
    else:
        cls = DartsMinusSearchNetwork if name == "darts_minus" else SearchNetwork
        net = cls(4, 5, 3, steps=NODES, multiplier=NODES)
        if name == "darts_minus":
            net.set_auxiliary_skip_weight(0.5)
        arch = Architecture(steps=NODES, multiplier=NODES, init_scale=0.5)
    return net.double(), arch.double()


def outputs_and_gradients(net, arch):
    net, arch = copy.deepcopy(net), copy.deepcopy(arch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (4,), generator=g)
    zeros = []
    for module in net.modules():
        if isinstance(module, Zero):
            module.register_forward_hook(lambda *_: zeros.append(1))
    torch.manual_seed(2)  # the same dropout masks in both computations
    logits = net(x, arch())
    inputs = [x, *net.parameters(), *arch.parameters()]
    grads = torch.autograd.grad(F.cross_entropy(logits, y), inputs)
    alpha_normal = grads[1 + len(list(net.parameters()))]  # arch.parameters() starts with it
    return [logits.detach(), *grads], len(zeros), alpha_normal


@pytest.mark.parametrize("name", ["darts", "pc_darts", "p_darts", "darts_minus"])
def test_skipping_none_gives_the_same_outputs_and_gradients(name, monkeypatch):
    net, arch = space(name)
    skipped, computed_none, d_alpha_normal = outputs_and_gradients(net, arch)
    monkeypatch.setattr(MixedOp, "forward", all_ops_forward)
    every_op, old_none, _ = outputs_and_gradients(net, arch)
    assert computed_none == 0 and old_none > 0
    for new, old in zip(skipped, every_op, strict=True):
        assert torch.equal(new, old)
    # `none`'s architecture weight still gets its gradient, through the softmax of the others.
    assert (d_alpha_normal[:, PRIMITIVES.index("none")].abs() > 0).all()


def test_an_edge_of_none_only_still_has_an_output():
    op = MixedOp(4, 2, primitives=("none",)).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    assert torch.equal(op(x, torch.ones(1, dtype=torch.float64)), torch.zeros(2, 4, 4, 4).double())


# --- the engine ---------------------------------------------------------------------------


# A convolution, a pooling, `none` and the skip (with P-DARTS's dropout): every kind of op.
ENGINE_OPS = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")


def learners(num, dropout=0.0):
    torch.manual_seed(0)

    def net():
        network = PDartsSearchNetwork(4, 5, 3, steps=NODES, multiplier=NODES, primitives=ENGINE_OPS)
        network.set_skip_dropout(dropout)
        return network.double()

    def sgd(params):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=3e-4)

    return [
        Learner(
            PDartsArchitecture(
                steps=NODES, multiplier=NODES, primitives=ENGINE_OPS, init_scale=0.5
            ).double(),
            net() if num > 1 else None,
            net(),
            v_optimizer=sgd,
            w_optimizer=sgd,
            arch_optimizer=lambda params: torch.optim.Adam(params, lr=0.05),
        )
        for _ in range(num)
    ]


def data(seed=0):
    g = torch.Generator().manual_seed(seed)

    def images():
        return torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)

    return (
        [(images(), torch.randint(0, 5, (4,), generator=g))],
        [(images(), torch.randint(0, 5, (4,), generator=g))],
        [images()],
    )


def engine_of(group, hypergrad, **config):
    train, val, unlabeled = data()
    config = SGLConfig(hypergrad=hypergrad, lam=0.5, **config)
    return build_sgl_engine(group, train, val, unlabeled, config, train_iters=100, device="cpu")


def hypergradients(engine, num):
    return torch.cat([g.flatten() for k in range(num) for g in engine.last_hypergrad[k]])


def w_descent(stage):
    """One W descent step's loss and gradients, as Betty takes it (the step not applied)."""
    stage.descending = True
    try:
        loss = stage.training_step(stage.get_batch())
    finally:
        stage.descending = False
    torch.autograd.backward(loss, inputs=stage.trainable_parameters())
    grads = [p.grad.clone() for p in stage.trainable_parameters()]
    for p in stage.trainable_parameters():
        p.grad = None
    return loss.detach(), grads


def test_w_descent_backpropagates_its_parts_in_turn(monkeypatch):
    engine = engine_of(learners(2), HypergradConfig(type="first_order"))
    engine.step()
    engine.batches.advance()
    stage = engine.problem("w", 0)
    turn = SavedTensorPeak()
    with turn.measuring():
        loss, grads = w_descent(stage)
    # The computation it replaced: both parts' graphs, then one backward of their sum, with the
    # architecture's graph built too.
    monkeypatch.setattr(type(stage), "backward_now", lambda self, loss: loss)
    monkeypatch.setattr(type(stage), "architecture_weights", lambda self, arch: arch())
    together = SavedTensorPeak()
    with together.measuring():
        old_loss, old_grads = w_descent(stage)
    assert torch.equal(loss, old_loss)
    for new, old in zip(grads, old_grads, strict=True):
        assert torch.equal(new, old)
    assert turn.peak < 0.5 * together.peak


# The sweep as it was: every W stage's solver re-evaluates its loss with its peers' pseudo-labels
# computed inside, with their graphs, and differentiates towards the peers' V stages and
# architectures directly.
def sweep_through_label_graphs(self) -> None:
    if self._plan is None:
        self._plan = self._sweep_plan()
    successors, order = self._plan
    vectors, grads = self._validation(successors)
    for lower in order:
        if lower not in vectors:
            continue
        union = ProblemUnion(successors[lower])
        implicit = jvp_fn_mapping[lower.config.type](vectors[lower], lower, union, False)
        for target, part in union.split(implicit):
            _add(grads if target.role == "arch" else vectors, target, part)
    self.arch_grads = {arch.learner: grads[arch] for arch in self.arch_stages}


class Counts:
    """Pseudo-label forwards (V networks on D_u) and the peak of saved activations during the
    hypergradient sweep."""

    def __init__(self, group):
        self.label_forwards = 0
        self.memory = SavedTensorPeak()
        for learner in group:
            if learner.v_net is not None:
                learner.v_net.register_forward_pre_hook(self._count)
        self.unlabeled = None

    def _count(self, module, args):
        self.label_forwards += args[0] is self.unlabeled


def measured_step(engine, counts):
    compute = engine.problem("arch", 0).hypergradient._compute

    def measured():
        counts.unlabeled = engine.batches.get("unlabeled")
        with counts.memory.measuring():
            compute()
        counts.unlabeled = None

    engine.problem("arch", 0).hypergradient._compute = measured
    engine.step()


FINITE_DIFFERENCES = ("darts", "unrolled", "unrolled_post_step")
CASES = [
    ("darts", {}),
    ("unrolled", {}),
    ("unrolled_post_step", {}),
    ("unrolled", {"unrolled_exact": True}),
    ("neumann", {"neumann_iterations": 2, "neumann_alpha": 0.05}),
    ("cg", {"cg_iterations": 2}),
]


def compare_sweeps(num, kind, options, monkeypatch, dropout=0.0, **config):
    hypergrad = HypergradConfig(type=kind, **options)
    results = []
    for old in (False, True):
        group = learners(num, dropout)
        engine = engine_of(group, hypergrad, **config)
        engine.step()  # momentum buffers and moved weights: away from the initial point
        counts = Counts(group)
        with monkeypatch.context() as patch:
            if old:
                patch.setattr(OneSweep, "_compute", sweep_through_label_graphs)
            measured_step(engine, counts)
        results.append((hypergradients(engine, num), counts))
    return results


@pytest.mark.parametrize(("kind", "options"), CASES)
@pytest.mark.slow
def test_pseudo_labels_as_inputs_give_the_same_hypergradients(kind, options, monkeypatch):
    (new, counts), (old, old_counts) = compare_sweeps(2, kind, options, monkeypatch)
    assert torch.allclose(new, old, rtol=1e-9, atol=1e-13), (new - old).abs().max()
    # One labels' forward per learner (with its graph; the values are the W stages'): the
    # finite differences rebuilt them on both sides, in every W solve.
    assert counts.label_forwards == 2
    finite_differences = "unrolled_exact" not in options and kind in FINITE_DIFFERENCES
    assert old_counts.label_forwards == (4 if finite_differences else 2)


@pytest.mark.parametrize("kind", ["darts", "neumann"])
@pytest.mark.slow
def test_three_learners_rebuild_each_label_graph_once(kind, monkeypatch):
    options = {"neumann_alpha": 0.05} if kind == "neumann" else {}
    (new, counts), (old, old_counts) = compare_sweeps(3, kind, options, monkeypatch)
    assert torch.allclose(new, old, rtol=1e-9, atol=1e-13), (new - old).abs().max()
    assert counts.label_forwards == 3
    assert old_counts.label_forwards == (12 if kind == "darts" else 6)
    # Each W solve held its two peers' label graphs through its re-evaluation.
    assert counts.memory.peak < old_counts.memory.peak


@pytest.mark.slow
def test_without_the_direct_label_term_only_v_receives_the_labels_gradient(monkeypatch):
    (new, _), (old, _) = compare_sweeps(
        2, "neumann", {"neumann_alpha": 0.05}, monkeypatch, pseudo_label_arch_grad=False
    )
    assert torch.allclose(new, old, rtol=1e-9, atol=1e-13)


@pytest.mark.slow
def test_label_graphs_are_rebuilt_with_the_masks_of_their_values(monkeypatch):
    """With dropout in the pseudo-labellers the rebuilt graph replays the draws its constant
    values were made with, so the chain rule runs through the labels the solvers saw."""
    group = learners(2, dropout=0.5)
    engine = engine_of(group, HypergradConfig(type="darts"))
    engine.step()
    engine.batches.advance()
    stage = engine.problem("w", 1)
    peer = stage.peers[0]
    values = stage.constant_pseudo_labels(peer).values
    before = torch.get_rng_state()
    rebuilt = stage.pseudo_label_graph(peer)
    assert torch.equal(rebuilt.detach(), values) and rebuilt.requires_grad
    assert torch.equal(torch.get_rng_state(), before)  # the random stream moves on as it was
    fresh = peer.pseudo_labels(engine.batches.get("unlabeled"), stage.sgl)
    assert not torch.equal(fresh.detach(), values)  # other masks: the replay is what matters
    engine.step()
    assert all(torch.isfinite(g).all() for g in engine.last_hypergrad[0])


def test_unrolled_keeps_the_sgd_direction_only_where_one_step_weights_are_taken():
    engine = engine_of(learners(2), HypergradConfig(type="unrolled"))
    engine.step()
    for k in range(2):
        v_step, w_step = engine.problem("v", k).last_step, engine.problem("w", k).last_step
        assert v_step.weights is not None and v_step.direction is None  # V: pre-step weights
        assert w_step.weights is not None and w_step.direction is not None  # W: and W'


# --- K = 1 darts: W steps once, one validation backward ------------------------------------


class GradientCalls:
    """Backward calls (``torch.autograd.grad`` and ``torch.autograd.backward``, which
    ``Tensor.backward`` runs) and W network forwards during one engine step."""

    def __init__(self, monkeypatch, w_net):
        self.backwards = self.w_forwards = 0
        for name in ("grad", "backward"):
            original = getattr(torch.autograd, name)
            monkeypatch.setattr(torch.autograd, name, self._counting(original))
        w_net.register_forward_pre_hook(self._forward)

    def _counting(self, original):
        def call(*args, **kwargs):
            self.backwards += 1
            return original(*args, **kwargs)

        return call

    def _forward(self, module, args):
        self.w_forwards += 1


def k1_darts_step(path_by_path: bool, monkeypatch):
    group = learners(1)
    engine = engine_of(group, HypergradConfig(type="darts", path_by_path=path_by_path))
    engine.step()  # momentum: W's step is not a plain gradient step
    w_stage = engine.problem("w", 0)
    steps = []
    monkeypatch.setattr(w_stage.optimizer, "step", _recording(w_stage.optimizer.step, steps))
    with monkeypatch.context() as patch:
        calls = GradientCalls(patch, group[0].w_net)
        engine.step()
    return hypergradients(engine, 1), calls, len(steps)


def _recording(step, into):
    def recorded(*args, **kwargs):
        into.append(1)
        return step(*args, **kwargs)

    return recorded


def test_k1_darts_steps_w_once_and_takes_one_backward_for_alpha_and_w(monkeypatch):
    """K = 1 darts is Betty's DARTS: the validation loss at W's post-step weights gives dF/dA and
    dF/dW in one backward (Betty takes them in two), the finite differences perturb W where its
    one step left it (no step redone), and the numbers are Betty's own."""
    sweep, calls, w_steps = k1_darts_step(False, monkeypatch)
    betty, betty_calls, betty_w_steps = k1_darts_step(True, monkeypatch)
    assert torch.allclose(sweep, betty, rtol=1e-10, atol=1e-14), (sweep - betty).abs().max()
    # W: its descent, the validation pass, the two sides of the difference.
    assert w_steps == betty_w_steps == 1
    assert calls.w_forwards == betty_calls.w_forwards == 4
    # Backwards: W's descent, validation (A and W together), the two differences; Betty adds one.
    assert calls.backwards == 4
    assert betty_calls.backwards == 5


# --- one graph of a W loss at a time ---------------------------------------------------------


class WForwards:
    """Forward calls of the W networks (every build of a W loss term's graph)."""

    def __init__(self, group):
        self.calls = 0
        for learner in group:
            learner.w_net.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("neumann", {"neumann_iterations": 1, "neumann_alpha": 0.05}),
        ("neumann", {"neumann_iterations": 3, "neumann_alpha": 0.05}),
        ("cg", {"cg_iterations": 2}),
    ],
)
@pytest.mark.parametrize("num", [2, 3])
@pytest.mark.slow
def test_one_graph_at_a_time_gives_the_same_hypergradients_with_less_memory(num, kind, options):
    results = []
    for one_at_a_time in (False, True):
        group = learners(num, dropout=0.3)  # P-DARTS's skip dropout: rebuilds replay the masks
        hypergrad = HypergradConfig(type=kind, one_graph_at_a_time=one_at_a_time, **options)
        engine = engine_of(group, hypergrad)
        engine.step()  # away from the initial point
        counts, forwards = Counts(group), WForwards(group)
        measured_step(engine, counts)
        results.append((hypergradients(engine, num), counts.memory.peak, forwards.calls))
        # The random stream after the step is the one the default path leaves.
        results[-1] += (torch.rand(3),)
    (together, peak_together, calls_together, rng), (in_turn, peak_in_turn, calls, rng_in_turn) = (
        results
    )
    assert torch.allclose(in_turn, together, rtol=1e-10, atol=1e-14), (
        (in_turn - together).abs().max()
    )
    assert torch.equal(rng, rng_in_turn)
    assert peak_in_turn < 0.8 * peak_together
    # Each W solve's Hessian applications and its closing mixed product each rebuild one term:
    # 2 builds of its two terms, then one more per product after the first.
    products = options.get("neumann_iterations", options.get("cg_iterations")) + 1
    assert calls - calls_together == num * (products - 1)


def test_sgl_neumann_is_bettys_neumann_operation_for_operation():
    from betty.hypergradient.neumann import neumann as bettys_neumann

    engine = engine_of(learners(2), HypergradConfig(type="neumann", neumann_alpha=0.05))
    engine.step()
    stage = engine.problem("w", 0)
    union = ProblemUnion([engine.problem("arch", 0)])
    torch.manual_seed(3)
    vector = [torch.randn_like(p) for p in stage.trainable_parameters()]
    ours = jvp_fn_mapping[stage.config.type](vector, stage, union, False)
    # The same convolutions as ours (their numbers against PyTorch's: test_second_order_conv).
    with second_order_pass():
        theirs = bettys_neumann(vector, stage, union, False)
    assert stage.config.type == "sgl_neumann"
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_one_graph_at_a_time_is_for_the_implicit_types():
    with pytest.raises(ValueError, match="applies to the implicit types"):
        HypergradConfig(type="unrolled", one_graph_at_a_time=True)
