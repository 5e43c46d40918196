"""The one-step unrolled hypergradient written out from its formulas with autograd: the oracle
the engine's ``unrolled`` types are held to (tests, ``benchmarks/hypergrad_fidelity.py``).

Nothing here uses the engine: each function takes the learners' modules (any network called as
``net(x, arch())``), their SGD momentum buffers, one batch per split and the step settings, and
differentiates the paper's Eq. 5-11 by autograd through ``torch.func.functional_call``.

- ``one_step_hypergradients``: Eq. 5-11 exactly. V'_k = V_k - xi_v (mu b + c_k g + wd V_k) with
  c_k V's gradient-clipping factor (held constant), W'_j = W_j - xi_w (mu b + g + wd W_j) with g
  W_j's gradient on D_tr and on D_u pseudo-labelled by the peers' V'_k (never clipped, as DARTS's
  virtual step); the gradient of sum_j L_val(W'_j, A_j) with respect to every A_k.
- ``darts_second_order_gradient``: K = 1 as DARTS's second-order architect computes it: the
  same virtual step, v = dL_val(w')/dw', and the mixed derivative by central differences
  around the pre-step w with radius R = r / ||v||.
- ``post_step_hypergradients``: the same chain rule with every product around the post-step
  weights (Betty's placement), from the weights the engine ended its lower steps with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sgl_betty.config import soft_cross_entropy, softmax_target


@dataclass
class LearnerState:
    """A learner's modules and the momentum buffers of its V and W optimizers (by parameter name;
    empty before the first step)."""

    arch: nn.Module
    v_net: nn.Module | None
    w_net: nn.Module
    v_buffers: dict[str, torch.Tensor]
    w_buffers: dict[str, torch.Tensor]


@dataclass
class StepSettings:
    lr_v: float
    lr_w: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_v: float = 0.0  # 0: V's step is not clipped
    clip_w: float = 0.0  # not the engine's semantics (W' is never clipped): a negative control
    lam: float = 0.1
    pseudo_label_arch_grad: bool = True
    l2_in_loss: float = 0.0
    labeled_loss: Callable = F.cross_entropy
    pseudo_target: Callable = softmax_target
    pseudo_loss: Callable = soft_cross_entropy


@dataclass
class Batches:
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    unlabeled: torch.Tensor | None = None


def _leaves(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().requires_grad_(True) for name, p in module.named_parameters()}


def _values(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


class _Group:
    """Functional views of the learners: architecture leaves A_k and calls f(x; theta, A_k)."""

    def __init__(self, learners: list[LearnerState], settings: StepSettings):
        self.learners = learners
        self.settings = settings
        self.alphas = [_leaves(learner.arch) for learner in learners]

    def arch(self, k: int, detach: bool = False):
        alphas = self.alphas[k]
        if detach:
            alphas = {name: a.detach() for name, a in alphas.items()}
        return functional_call(self.learners[k].arch, alphas, ())

    def forward(self, net: nn.Module, params, x, k: int, detach_arch: bool = False):
        return functional_call(net, params, (x, self.arch(k, detach_arch)))

    def penalty(self, params) -> torch.Tensor | float:
        if not self.settings.l2_in_loss:
            return 0.0
        return 0.5 * self.settings.l2_in_loss * sum(p.pow(2).sum() for p in params.values())

    def v_loss(self, k, params, batches: Batches):
        x, y = batches.train
        logits = self.forward(self.learners[k].v_net, params, x, k)
        return self.settings.labeled_loss(logits, y) + self.penalty(params)

    def w_loss(self, j, params, peer_v: dict[int, dict], batches: Batches):
        s = self.settings
        x, y = batches.train
        w_net = self.learners[j].w_net
        loss = s.labeled_loss(self.forward(w_net, params, x, j), y) + self.penalty(params)
        if peer_v:
            logits_u = self.forward(w_net, params, batches.unlabeled, j)
            for k, v_params in peer_v.items():
                peer_logits = self.forward(
                    self.learners[k].v_net,
                    v_params,
                    batches.unlabeled,
                    k,
                    detach_arch=not s.pseudo_label_arch_grad,
                )
                loss = loss + s.lam * s.pseudo_loss(logits_u, s.pseudo_target(peer_logits))
        return loss

    def val_loss(self, j, params, batches: Batches):
        x, y = batches.val
        return self.settings.labeled_loss(self.forward(self.learners[j].w_net, params, x, j), y)

    def gradient(self, loss, params: dict) -> dict:
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        return dict(zip(params, grads))

    def sgd_step(self, params, grads, buffers, lr, clip_scale=1.0):
        s = self.settings
        stepped = {}
        for name, p in params.items():
            direction = clip_scale * grads[name] + s.weight_decay * p.detach()
            if s.momentum and name in buffers:
                direction = direction + s.momentum * buffers[name]
            stepped[name] = p - lr * direction
        return stepped

    def clip_scale(self, grads: dict, clip: float):
        if not clip:
            return 1.0
        norm = torch.sqrt(sum(g.detach().pow(2).sum() for g in grads.values()))
        return torch.clamp(clip / (norm + 1e-6), max=1.0)

    def arch_gradients(self, total):
        flat = [a for alphas in self.alphas for a in alphas.values()]
        found = torch.autograd.grad(total, flat, allow_unused=True)
        found = [torch.zeros_like(a) if g is None else g for g, a in zip(found, flat)]
        out, start = [], 0
        for alphas in self.alphas:
            out.append(found[start : start + len(alphas)])
            start += len(alphas)
        return out


def _peers(j: int, values: list) -> dict[int, dict]:
    return {k: value for k, value in enumerate(values) if k != j and value is not None}


def one_step_hypergradients(
    learners: list[LearnerState], batches: Batches, settings: StepSettings
) -> list[list[torch.Tensor]]:
    """d/dA_k of sum_j L_val(W'_j, A_j) through one step of every V and W (Eq. 5-11)."""
    group = _Group(learners, settings)
    multi = len(learners) > 1
    v_next = []
    for k, learner in enumerate(learners):
        if not multi:
            v_next.append(None)
            continue
        v = _leaf_view(_values(learner.v_net))
        grads = group.gradient(group.v_loss(k, v, batches), v)
        v_next.append(
            group.sgd_step(
                v, grads, learner.v_buffers, settings.lr_v, group.clip_scale(grads, settings.clip_v)
            )
        )
    total = 0.0
    for j, learner in enumerate(learners):
        w = _leaf_view(_values(learner.w_net))
        grads = group.gradient(group.w_loss(j, w, _peers(j, v_next), batches), w)
        w_next = group.sgd_step(
            w, grads, learner.w_buffers, settings.lr_w, group.clip_scale(grads, settings.clip_w)
        )
        total = total + group.val_loss(j, w_next, batches)
    return group.arch_gradients(total)


def _at_value_through_step(params: dict, grads: dict, lr: float) -> dict:
    """theta, with the derivative of the SGD step -lr * grad taken from it."""
    return {
        name: p.detach() - lr * (grads[name] - grads[name].detach()) for name, p in params.items()
    }


def post_step_hypergradients(
    learners: list[LearnerState], batches: Batches, settings: StepSettings
) -> list[list[torch.Tensor]]:
    """The chain rule of Eq. 7-11 with every mixed product around the weights the modules hold
    now (the lower problems' post-step weights) and no clip factor: Betty's placement.

    ``x + (s - s.detach())`` has the value x and the derivative of s: each lower problem keeps its
    post-step value while the derivative runs through a step taken from there.
    """
    group = _Group(learners, settings)
    v_bar = []
    for k, learner in enumerate(learners):
        if learner.v_net is None or len(learners) == 1:
            v_bar.append(None)
            continue
        v = _leaf_view(_values(learner.v_net))
        grads = group.gradient(group.v_loss(k, v, batches), v)
        v_bar.append(_at_value_through_step(v, grads, settings.lr_v))
    total = 0.0
    for j, learner in enumerate(learners):
        w = _leaf_view(_values(learner.w_net))
        grads = group.gradient(group.w_loss(j, w, _peers(j, v_bar), batches), w)
        w_bar = _at_value_through_step(w, grads, settings.lr_w)
        total = total + group.val_loss(j, w_bar, batches)
    return group.arch_gradients(total)


def darts_second_order_gradient(
    learner: LearnerState, batches: Batches, settings: StepSettings, r: float = 0.01
) -> list[torch.Tensor]:
    """K = 1, DARTS's second-order architecture gradient: dL_val(w')/dA - xi (g+ - g-) / (2R),
    g+- = dL_train(w +- R v)/dA, v = dL_val(w')/dw', R = r / ||v||, w' the virtual step."""
    group = _Group([learner], settings)
    w = _values(learner.w_net)
    leaves = _leaf_view(w)
    x, y = batches.train
    train_grads = torch.autograd.grad(
        settings.labeled_loss(group.forward(learner.w_net, leaves, x, 0), y), list(leaves.values())
    )
    with torch.no_grad():
        virtual = group.sgd_step(w, dict(zip(w, train_grads)), learner.w_buffers, settings.lr_w)
    virtual = _leaf_view(virtual)
    val_loss = group.val_loss(0, virtual, batches)
    alphas = list(group.alphas[0].values())
    found = torch.autograd.grad(val_loss, alphas + list(virtual.values()))
    direct, v = found[: len(alphas)], found[len(alphas) :]
    radius = r / torch.sqrt(sum(t.pow(2).sum() for t in v))

    def train_alpha_grad(sign: float):
        shifted = {n: p + sign * radius * t for (n, p), t in zip(w.items(), v)}
        loss = settings.labeled_loss(group.forward(learner.w_net, shifted, x, 0), y)
        return torch.autograd.grad(loss, alphas)

    plus, minus = train_alpha_grad(1.0), train_alpha_grad(-1.0)
    return [d - settings.lr_w * (p - m) / (2 * radius) for d, p, m in zip(direct, plus, minus)]


def _leaf_view(values: dict) -> dict:
    return {name: t.detach().clone().requires_grad_(True) for name, t in values.items()}


def learner_states(engine, learners) -> list[LearnerState]:
    """The modules and momentum buffers of an engine's learners, before its next step."""
    states = []
    for k, learner in enumerate(learners):
        buffers = {}
        for role in ("v", "w"):
            net = learner.v_net if role == "v" else learner.w_net
            found = {}
            if net is not None and not (role == "v" and len(learners) == 1):
                optimizer = engine.problem(role, k).optimizer
                for name, param in net.named_parameters():
                    buffer = optimizer.state.get(param, {}).get("momentum_buffer")
                    if buffer is not None:
                        found[name] = buffer.detach().clone()
            buffers[role] = found
        states.append(
            LearnerState(learner.arch, learner.v_net, learner.w_net, buffers["v"], buffers["w"])
        )
    return states
