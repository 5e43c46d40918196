"""build_sgl_engine: the 3K Betty problems of SGL and the edges of the paper's Eq. 4.

Edges (``l2u``: the lower's parameters appear in the upper's loss; ``u2l``: the upper's
parameters appear in the lower's loss, and the upper receives a hypergradient along the
``l2u`` paths from that lower back to itself):

- l2u  v_k -> w_j (j != k): learner k's pseudo-labels enter W_j's loss;
- l2u  w_j -> arch_k (all j, k): every W_j enters arch_k's loss (the sum of validation losses);
- u2l  arch_k -> v_k, arch_k -> w_k, and arch_k -> w_j (j != k) for the direct dependence of
  learner k's pseudo-labels on A_k.

The hypergradient of arch_k then follows the paths arch_k <- w_k (Eq. 8), arch_k <- w_j
(direct pseudo-label term) and arch_k <- v_k <- w_j (Eq. 10-11).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
from betty.configs import Config, EngineConfig

from sgl_betty.config import SGLConfig
from sgl_betty.learner import Learner
from sgl_betty.problems import ArchStage, NonFiniteWatch, Peer, VStage, WStage

from .batches import SharedBatches
from .hypergradient import BettyPaths, OneSweep, ValidationObjective
from .precision import describe_policy
from .sgl_engine import SGLEngine
from .solvers import register_solvers, solver_name
from .unrolled import StepRecorder, check_unrollable


def lower_problem_config(sgl: SGLConfig, clip: float, warmup_steps: int = 0) -> Config:
    """Betty Config of a V or W problem: the solver used when a hypergradient passes through it."""
    hypergrad = sgl.hypergrad
    return Config(
        type=solver_name(hypergrad),
        darts_alpha=hypergrad.darts_alpha,
        neumann_iterations=hypergrad.neumann_iterations,
        neumann_alpha=hypergrad.neumann_alpha,
        cg_iterations=hypergrad.cg_iterations,
        cg_alpha=hypergrad.cg_alpha,
        gradient_clipping=clip,
        warmup_steps=warmup_steps,
    )


def hypergradient_strategy(config: SGLConfig, w_stages, batches):
    """How the architectures' gradient of Eq. 3's objective is computed (engine/hypergradient.py)."""
    kind = config.hypergrad.type
    objective = ValidationObjective(w_stages, config.validation_loss or config.labeled_loss)
    policy = kind != "first_order"  # the precision policy protects second-order terms
    if policy and not config.hypergrad.full_precision:
        warnings.warn(
            "HypergradConfig(full_precision=False): second-order terms are evaluated in the "
            "descent's precision (bf16 autocast, TF32) and can be noise; see BENCHMARKS.md",
            stacklevel=3,
        )
        policy = False
    if config.hypergrad.path_by_path:
        return BettyPaths(objective, policy)
    return OneSweep(objective, batches, policy, at_one_step_weights=kind == "unrolled")


def record_unrolled_steps(config: SGLConfig, v_stages, w_stages) -> None:
    """The unrolled types differentiate the step each V and W takes (engine/unrolled.py): V's step
    as taken (W's step saw it), W's as DARTS's unclipped virtual step."""
    kind = config.hypergrad.type
    if kind not in ("unrolled", "unrolled_post_step"):
        return
    pre_step = kind == "unrolled"
    for stage in v_stages + w_stages:
        if pre_step:
            check_unrollable(stage.optimizer, stage.name)
        stage.step_recorder = StepRecorder(
            keep_weights=pre_step,
            through_clipping=stage.role == "v",
            keep_direction=stage.role == "w",
        )


def build_sgl_engine(
    learners: Sequence[Learner],
    train: Iterable,
    val: Iterable,
    unlabeled: Iterable | None,
    config: SGLConfig | None = None,
    train_iters: int = 1,
    valid_step: int | None = None,
    device: str | torch.device | None = None,
) -> SGLEngine:
    """Build the SGL engine for K = len(learners) learners.

    ``train`` and ``val`` yield (x, y); ``unlabeled`` yields x or (x, anything) and may be None
    for K = 1. Any re-iterable works; an exhausted one restarts. ``valid_step``: run
    ``engine.validation()`` every that many steps inside ``engine.run()`` (None: never).
    """
    config = config or SGLConfig()
    learners = list(learners)
    if len(learners) < 1:
        raise ValueError(
            "SGL needs at least one learner (K >= 1); K = 1 is the single-learner method"
        )
    if not all(isinstance(learner, Learner) for learner in learners):
        raise TypeError("learners must be sgl_betty.Learner objects")
    num = len(learners)
    if num > 1:
        if unlabeled is None:
            raise ValueError("K > 1 learners pseudo-label unlabeled data: pass `unlabeled` data")
        missing = [k for k, learner in enumerate(learners) if learner.v_net is None]
        if missing:
            raise ValueError(
                f"learners {missing} have no v_net; with K > 1 every learner needs V_k"
            )
    if train_iters < 1:
        raise ValueError(f"train_iters must be >= 1 (got {train_iters})")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    register_solvers()

    batches = SharedBatches(
        {"train": train, "val": val, "unlabeled": unlabeled if num > 1 else None},
        channels_last=config.channels_last,
    )
    if config.channels_last:
        for learner in learners:
            for net in (learner.v_net, learner.w_net):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
    shared = dict(batches=batches, sgl=config, non_finite=NonFiniteWatch())
    hypergrad = config.hypergrad.type
    v_stages, w_stages, arch_stages = [], [], []
    for k, learner in enumerate(learners):
        if num > 1:
            v_stages.append(
                VStage(
                    k,
                    learner.v_net,
                    learner.arch,
                    optimizer=learner.v_optimizer(learner.v_net.parameters()),
                    scheduler=None,
                    betty_config=lower_problem_config(config, config.grad_clip_v),
                    **shared,
                )
            )
        peers = [Peer(j, other.v_net, other.arch) for j, other in enumerate(learners) if j != k]
        w_stages.append(
            WStage(
                k,
                learner.w_net,
                learner.arch,
                peers,
                optimizer=learner.w_optimizer(learner.w_net.parameters()),
                scheduler=None,
                # Betty's warm-up on W delays the first call of W's uppers (the architectures).
                betty_config=lower_problem_config(
                    config, config.grad_clip_w, config.arch_warmup_steps
                ),
                **shared,
            )
        )
    hypergradient = hypergradient_strategy(config, w_stages, batches)
    for k, learner in enumerate(learners):
        arch_stages.append(
            ArchStage(
                k,
                learner.arch,
                hypergradient,
                optimizer=learner.arch_optimizer(learner.arch.parameters()),
                scheduler=None,
                # Several hypergradient paths start from the same loss, so its graph is kept.
                betty_config=Config(retain_graph=True, gradient_clipping=config.grad_clip_arch),
                **shared,
            )
        )

    l2u, u2l = {}, {}
    for k in range(num):
        if num > 1:
            l2u[v_stages[k]] = [w_stages[j] for j in range(num) if j != k]
        l2u[w_stages[k]] = list(arch_stages)
    if hypergrad != "first_order":
        for k in range(num):
            lowers = [w_stages[k]]
            if num > 1 and not config.detach_pseudo_labels:
                lowers.append(v_stages[k])
                if config.pseudo_label_arch_grad:
                    lowers += [w_stages[j] for j in range(num) if j != k]
            u2l[arch_stages[k]] = lowers

    problems = v_stages + w_stages + arch_stages
    engine_config = EngineConfig(train_iters=train_iters, valid_step=valid_step or train_iters + 1)
    engine = SGLEngine(
        problems,
        engine_config,
        dependencies={"l2u": l2u, "u2l": u2l},
        batches=batches,
        device=device,
        num_learners=num,
        non_finite=shared["non_finite"],
    )
    if isinstance(hypergradient, OneSweep):
        hypergradient.arch_stages = list(arch_stages)
    # Betty rebuilt each optimizer from its class and defaults; rebuild from the user's factory
    # so per-group settings survive, then attach schedulers to the optimizers actually stepped.
    for k, learner in enumerate(learners):
        stages = [
            (w_stages[k], learner.w_optimizer, learner.w_scheduler),
            (arch_stages[k], learner.arch_optimizer, None),
        ]
        if num > 1:
            stages.append((v_stages[k], learner.v_optimizer, learner.v_scheduler))
        for stage, make_optimizer, make_scheduler in stages:
            stage.optimizer = make_optimizer(stage.trainable_parameters())
            stage.scheduler = make_scheduler(stage.optimizer) if make_scheduler else None
    record_unrolled_steps(config, v_stages, w_stages)
    if config.compile:
        for stage in v_stages + w_stages:
            stage.compiled_module = torch.compile(stage.module, backend=config.compile_backend)
    engine.precision_policy = describe_policy(
        config.autocast_dtype, hypergrad != "first_order", config.hypergrad.full_precision
    )
    return engine
