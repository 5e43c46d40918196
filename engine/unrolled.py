"""The paper's one-step unrolled hypergradient (Eq. 5-11), as DARTS takes it (quark0/darts,
second-order ``Architect``).

Eq. 5-6, the one-step weights. Each lower problem records, when it steps, the step it took:
its pre-step weights w, the step size xi of every parameter (read from the optimizer's
parameter group when it stepped), and the direction d of the plain SGD step from w, so that

    w' = w - xi * d,   d = momentum * buffer + grad + weight_decay * w   (DARTS's virtual step).

Only ``grad`` depends on the architectures, so  dw'/dA = -xi * d(grad)/dA  (one SGD step; its
momentum buffer and weight decay are constants).

Eq. 7-11, the chain rule through those steps. For a vector u = dF/dw' arriving at a lower
problem (F the architecture objective, Eq. 3), that problem sends on

    u . dw'/dy = -(d^2 L / dy dw)(xi * u)   for every y its loss depends on (A_k, V_k),

the mixed second derivative taken at the point its own step was taken: its pre-step weights w
and the other problems as it saw them. The engine's sweep (``engine/hypergradient.py``) adds
these up over the paths of Betty's graph, which gives Eq. 7 (own W), Eq. 10-11 (through a
peer's pseudo-labels and V) and the direct pseudo-label term.

Gradient clipping. DARTS never clips its virtual step, so W' is the unclipped step above and the
validation gradient is taken there. V's step is the one W's step saw (through the pseudo-labels)
and therefore the one differentiated: V' is V's step as taken, clipped or not, with the clip
factor held constant (its derivative ``-xi * c * d(grad)/dA``). With clipping off, or not
engaged in a step, both are exactly Eq. 5-6.

``unrolled_post_step`` keeps Betty's behaviour: Betty runs a problem's solver after that problem
stepped, so its mixed product is taken around the post-step weights w' and the validation
gradient at the real post-step weights. At a fixed point (w' = w) the two agree; during a search
they differ (see BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sgl_betty.errors import UnrolledStepError

from .products import exact_mixed_product, finite_difference_product, weights_set_to


@dataclass
class StepRecord:
    """The step a lower problem took (Eq. 5-6): enough to rebuild its one-step weights."""

    step_sizes: list[float]
    # Pre-step weights w and the unclipped SGD direction d, when the method needs them.
    weights: list[torch.Tensor] | None = None
    direction: list[torch.Tensor] | None = None
    # The factor gradient clipping multiplied the gradient by (1: not clipped), and whether the
    # derivative goes through the clipped step (V) or DARTS's unclipped virtual step (W).
    clip_scale: torch.Tensor | float = 1.0
    through_clipping: bool = False

    def one_step_weights(self) -> list[torch.Tensor]:
        """w' = w - xi * d: DARTS's virtual step (never clipped)."""
        return [w - lr * d for w, lr, d in zip(self.weights, self.step_sizes, self.direction)]

    def through_step(self, vector) -> list[torch.Tensor]:
        """u . dw'/d(grad) = xi * u, times the clip factor where the derivative goes through the
        clipped step."""
        scale = self.clip_scale if self.through_clipping else 1.0
        return [(lr * scale) * v for lr, v in zip(self.step_sizes, vector)]

    def times_step_size(self, vector) -> list[torch.Tensor]:
        return [lr * v for lr, v in zip(self.step_sizes, vector)]


@dataclass(frozen=True)
class StepRecorder:
    """What a lower problem keeps of each step it takes (its ``step_recorder``)."""

    keep_weights: bool
    through_clipping: bool = False
    # The SGD direction rebuilds the one-step weights, where only W's validation gradient is taken.
    keep_direction: bool = True

    def __call__(self, problem) -> StepRecord:
        params = problem.trainable_parameters()
        record = record_step(problem.optimizer, params, self.keep_weights, self.keep_direction)
        record.through_clipping = self.through_clipping
        return record


def step_sizes(optimizer: torch.optim.Optimizer, params) -> list[float]:
    """Each parameter's learning rate in the step the optimizer is about to take."""
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in lr_of]
    if missing:
        raise UnrolledStepError(
            f"parameters {missing} of this problem are in no parameter group of its optimizer"
        )
    return [float(lr_of[id(p)]) for p in params]


def check_unrollable(optimizer: torch.optim.Optimizer, name: str) -> None:
    """The unrolled hypergradient differentiates one plain SGD step (with momentum and weight
    decay, as DARTS): refuse optimizers whose step it would differentiate wrongly."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise UnrolledStepError(
            f"hypergrad.type=unrolled differentiates one SGD step of {name} (the paper's Eq. 5-6), "
            f"but its optimizer is {type(optimizer).__name__}: use torch.optim.SGD for V and W, "
            "or an implicit type (neumann, cg) or unrolled_post_step"
        )
    for group in optimizer.param_groups:
        if group.get("nesterov") or group.get("dampening", 0) != 0 or group.get("maximize"):
            raise UnrolledStepError(
                f"hypergrad.type=unrolled follows DARTS's SGD step (momentum and weight decay, no "
                f"dampening, nesterov or maximize); the optimizer of {name} sets "
                f"nesterov={group.get('nesterov')}, dampening={group.get('dampening')}, "
                f"maximize={group.get('maximize')}"
            )


@torch.no_grad()
def record_step(
    optimizer: torch.optim.Optimizer, params, keep_weights: bool, keep_direction: bool = True
) -> StepRecord:
    """Called between the backward pass and ``optimizer.step()``, grads unclipped."""
    sizes = step_sizes(optimizer, params)
    if not keep_weights:
        return StepRecord(sizes)
    if not keep_direction:
        return StepRecord(sizes, [param.detach().clone() for param in params])
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    weights, direction = [], []
    for param in params:
        group = group_of[id(param)]
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        step = grad + group["weight_decay"] * param if group["weight_decay"] else grad.clone()
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if group["momentum"] and buffer is not None:
            step = step + group["momentum"] * buffer
        weights.append(param.detach().clone())
        direction.append(step)
    return StepRecord(sizes, weights, direction)


def _loss_of(problem):
    return lambda: problem.training_step_exec(problem.cur_batch)


def _mixed_product(problem, vector, targets, exact: bool):
    params = problem.trainable_parameters()
    if exact:
        return exact_mixed_product(_loss_of(problem), params, targets, vector)
    radius = problem.config.darts_alpha
    return finite_difference_product(_loss_of(problem), params, targets, vector, radius)


def send_implicit(prev, implicit, sync):
    """Betty's contract: the last solver on a path (``sync``) adds into the upper's gradients."""
    if sync:
        prev.set_grads(prev.trainable_parameters(), implicit)
        return None
    return implicit


def _unrolled(vector, curr, prev, sync, exact: bool):
    record = curr.last_step
    scaled = record.through_step(vector)
    targets = prev.trainable_parameters()
    with weights_set_to(curr.trainable_parameters(), record.weights):
        product = _mixed_product(curr, scaled, targets, exact)
    return send_implicit(prev, [-p for p in product], sync)


def _unrolled_post_step(vector, curr, prev, sync, exact: bool):
    scaled = curr.last_step.times_step_size(vector)
    product = _mixed_product(curr, scaled, prev.trainable_parameters(), exact)
    return send_implicit(prev, [-p for p in product], sync)


def unrolled_finite_difference(vector, curr, prev, sync):
    """Betty jvp function, Eq. 8-9: -(d^2 L / d prev d w)(xi u) at the pre-step weights,
    by central differences with DARTS's radius (``darts_alpha`` / ||xi u||)."""
    return _unrolled(vector, curr, prev, sync, exact=False)


def unrolled_exact(vector, curr, prev, sync):
    """Betty jvp function, Eq. 8: the same product by double backward."""
    return _unrolled(vector, curr, prev, sync, exact=True)


def unrolled_post_step_finite_difference(vector, curr, prev, sync):
    """Betty jvp function: Betty's placement, -(d^2 L / d prev d w)(xi u) around the
    post-step weights w', by central differences."""
    return _unrolled_post_step(vector, curr, prev, sync, exact=False)


def unrolled_post_step_exact(vector, curr, prev, sync):
    """Betty jvp function: the post-step product by double backward (Neumann with no
    iterations and alpha = xi)."""
    return _unrolled_post_step(vector, curr, prev, sync, exact=True)
