"""Typed configuration of the SGL optimisation itself (the paper's Eq. 4 and its solvers).

``HypergradConfig`` is also the recipes' ``hypergrad`` section: ``sgl_betty.experiment.config``
uses it as that node's OmegaConf schema, and ``OmegaConf.to_object`` of the node is the
library's config. ``SGLConfig`` holds callables (losses), which OmegaConf cannot; the recipes
build it from their ``lam`` and ``search`` keys (``experiment.config.sgl_config``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sgl_betty.choices import HypergradType, values

HYPERGRAD_TYPES = values(HypergradType)
# The types that solve a linear system with Hessian-vector products.
IMPLICIT_TYPES = (HypergradType.neumann.value, HypergradType.cg.value)


def one_graph_message(kind: str) -> str:
    return (
        f"hypergrad.one_graph_at_a_time applies to the implicit types ({', '.join(IMPLICIT_TYPES)}), "
        f"not to hypergrad.type={kind}: drop it, or choose neumann or cg"
    )


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a probability vector (the paper's loss on pseudo-labelled data)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def softmax_target(peer_logits: torch.Tensor) -> torch.Tensor:
    """A peer's pseudo-label: its predicted class probabilities, f(x; A_j, V_j)."""
    return F.softmax(peer_logits, dim=-1)


@dataclass
class HypergradConfig:
    """How the architecture's hypergradient is computed.

    ``type``:
      - ``first_order``: no upper-to-lower edges; dL_val/dA only (DARTS-1st, the released code).
      - ``darts``: Betty's finite-difference solver: identity inverse Hessian, the mixed second
        derivative by central differences (radius ``darts_alpha`` / ||v||) around the current,
        post-step weights.
      - ``unrolled``: the paper's Eq. 5-11 as DARTS's second order takes it: the validation
        gradient at the one-step weights W' = W - xi (momentum buffer * momentum + grad + weight
        decay * W), every mixed second derivative around the pre-step weights, scaled by the step
        size xi each V and W optimizer stepped with; by central differences with DARTS's radius
        (``darts_alpha`` / ||xi v||), or exactly by double backward with ``unrolled_exact``.
        Needs SGD for V and W (``engine/unrolled.py``).
      - ``unrolled_post_step``: Betty's placement of the same product, around the post-step
        weights (Betty runs a problem's solver after it stepped); equals ``unrolled`` only at a
        fixed point. Kept for comparison.
      - ``neumann``: Neumann series for the inverse Hessian (``neumann_iterations``,
        ``neumann_alpha``), Betty's series operation for operation (``sgl_neumann``), at the
        post-step weights.
      - ``cg``: conjugate gradient (``cg_iterations``, ``cg_alpha``) with the project's own,
        corrected solver (Betty 0.2.1's is wrong beyond one iteration), at the post-step weights.

    ``path_by_path``: Betty's own backward, each architecture following each of its paths
    separately (K^2 validation passes per step instead of K). Slow; the one-sweep engine's oracle.

    ``one_graph_at_a_time`` (``neumann`` and ``cg``): a W stage's solver holds the graph of one
    term of its loss at a time (the labelled term, then lambda times the unlabelled one) instead
    of both, rebuilding a term when a product needs it again: the peak of a K >= 2 step drops by
    about one term's double graph, for one forward and create-graph backward more per W solve
    and Hessian application (``engine/loss_graphs.py``). The same hypergradient (summed in
    another order).

    ``full_precision``: every second-order evaluation in the parameters' dtype with TF32 and
    autocast off (``engine/precision.py``). False evaluates them in the descent's precision: it
    exists to measure what the policy buys (``benchmarks/hypergrad_fidelity.py``) and warns.

    The fields are typed for OmegaConf (``type`` is a ``str``, one of ``HypergradType``'s
    values; a ``HypergradType`` member is one). The library's default ``type`` is
    ``first_order``; the recipes' is ``unrolled`` (``experiment.config.RunConfig``).
    """

    type: str = HypergradType.first_order.value
    darts_alpha: float = 0.01
    neumann_iterations: int = 1
    neumann_alpha: float = 1.0
    cg_iterations: int = 1
    cg_alpha: float = 1.0
    unrolled_exact: bool = False
    path_by_path: bool = False
    full_precision: bool = True
    one_graph_at_a_time: bool = False

    def __post_init__(self) -> None:
        if self.type not in HYPERGRAD_TYPES:
            raise ValueError(
                f"unknown hypergradient type {self.type!r}; choose one of {', '.join(HYPERGRAD_TYPES)}"
            )
        if self.one_graph_at_a_time and self.type not in IMPLICIT_TYPES:
            raise ValueError(one_graph_message(self.type))
        if self.neumann_iterations < 0 or self.cg_iterations < 1:
            raise ValueError(
                "neumann_iterations must be >= 0 and cg_iterations >= 1 "
                f"(got {self.neumann_iterations} and {self.cg_iterations})"
            )
        if self.darts_alpha <= 0 or self.neumann_alpha <= 0 or self.cg_alpha <= 0:
            raise ValueError("darts_alpha, neumann_alpha and cg_alpha must be > 0")


@dataclass
class SGLConfig:
    """The SGL objective (Eq. 4) and how its architecture gradient is taken.

    ``pseudo_label_arch_grad``: keep the direct dependence of peer pseudo-labels on A_k (the
    exact total derivative of Eq. 4); False drops it, as the paper's Eq. 10 does.
    ``detach_pseudo_labels``: treat pseudo-labels as constants (the released code); this removes
    the cross-learner hypergradient term entirely.
    ``l2_in_loss``: 0.5 * coeff * ||theta||^2 added to the V and W losses. Unlike optimizer weight
    decay it is part of the objective the implicit solvers differentiate.
    ``grad_clip_*``: gradient-norm clipping per stage (0 disables it).
    ``arch_warmup_steps``: V and W steps before the first architecture step (PC-DARTS's
    warm-up; also lets V and W converge before a hypergradient is taken).
    ``validation_loss``: the architecture objective's loss, per learner on D_val (None: the
    labelled loss); the objective is their sum (Eq. 3).
    ``autocast_dtype``: run the descent steps' losses under ``torch.autocast`` with this dtype
    (torch.bfloat16; float16 is refused: it needs a loss scaler). Parameters, gradients and
    optimizer states stay float32, and every second-order evaluation runs in float32 with TF32
    off (``engine/precision.py``).
    ``channels_last``: networks and image batches in channels-last memory format (faster
    convolutions on GPUs with tensor cores).
    ``compile``: ``torch.compile`` each V and W network (backend ``compile_backend``) for the
    passes that differentiate once: every V and W descent step and, for ``first_order``, the
    architectures' validation pass. Everything that differentiates twice or moves the weights
    (the hypergradient solvers' re-evaluations, finite differences, the validation pass of the
    second-order types) runs the eager network: the compiled one shares its parameters.
    """

    lam: float = 0.1
    hypergrad: HypergradConfig = field(default_factory=HypergradConfig)
    pseudo_label_arch_grad: bool = True
    detach_pseudo_labels: bool = False
    labeled_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    pseudo_target: Callable[[torch.Tensor], torch.Tensor] = softmax_target
    pseudo_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = soft_cross_entropy
    validation_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    l2_in_loss: float = 0.0
    grad_clip_v: float = 5.0
    grad_clip_w: float = 5.0
    grad_clip_arch: float = 0.0
    arch_warmup_steps: int = 0
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if isinstance(self.hypergrad, dict):
            self.hypergrad = HypergradConfig(**self.hypergrad)
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0 (got {self.lam}); it weighs the pseudo-label loss")
        if self.l2_in_loss < 0:
            raise ValueError(f"l2_in_loss must be >= 0 (got {self.l2_in_loss})")
        if self.arch_warmup_steps < 0:
            raise ValueError(f"arch_warmup_steps must be >= 0 (got {self.arch_warmup_steps})")
        if self.autocast_dtype not in (None, torch.bfloat16):
            raise ValueError(
                f"autocast_dtype={self.autocast_dtype} is not supported: use torch.bfloat16 or None "
                "(float16 needs a gradient scaler, which neither the descent steps nor the "
                "hypergradient solvers apply)"
            )
        for name in ("grad_clip_v", "grad_clip_w", "grad_clip_arch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 disables clipping)")
