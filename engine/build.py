"""build_sgl_problems: the 3K Betty problems of SGL and the edges of the paper's Eq. 4;
engine_from_problems: the engine that runs them (and any problem a user adds);
build_sgl_engine: the two in one call.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from betty.configs import Config, EngineConfig

from sgl_betty.config import SGLConfig
from sgl_betty.learner import Learner
from sgl_betty.problems import ArchStage, NonFiniteWatch, Peer, SGLStage, VStage, WStage
from sgl_betty.runtime import resolve_device

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


@dataclass(frozen=True)
class SGLStages:
    """The problem class of each stage. A replacement subclasses the default (same constructor)
    and changes what it needs, typically ``training_step``."""

    v: type[VStage] = VStage
    w: type[WStage] = WStage
    arch: type[ArchStage] = ArchStage

    def __post_init__(self) -> None:
        for name, default in (("v", VStage), ("w", WStage), ("arch", ArchStage)):
            chosen = getattr(self, name)
            if not (isinstance(chosen, type) and issubclass(chosen, default)):
                raise TypeError(
                    f"SGLStages({name}=...) must be a subclass of {default.__name__} "
                    f"(sgl_betty.problems), got {chosen!r}"
                )


Dependencies = dict[str, dict[SGLStage, list[SGLStage]]]
DATA_SPLITS = ("train", "val", "unlabeled")


def _check_learners(learners: list[Learner], data: Mapping[str, Iterable | None]) -> None:
    if len(learners) < 1:
        raise ValueError(
            "SGL needs at least one learner (K >= 1); K = 1 is the single-learner method"
        )
    if not all(isinstance(learner, Learner) for learner in learners):
        raise TypeError("learners must be sgl_betty.Learner objects")
    unknown = sorted(set(data) - set(DATA_SPLITS))
    if unknown or data.get("train") is None or data.get("val") is None:
        raise ValueError(
            f"data maps split names to batches: 'train' and 'val' (x, y), 'unlabeled' x for "
            f"K > 1; got keys {sorted(data)}"
        )
    if len(learners) > 1:
        if data.get("unlabeled") is None:
            raise ValueError("K > 1 learners pseudo-label unlabeled data: pass `unlabeled` data")
        missing = [k for k, learner in enumerate(learners) if learner.v_net is None]
        if missing:
            raise ValueError(
                f"learners {missing} have no v_net; with K > 1 every learner needs V_k"
            )


def _optimization(params, make_optimizer, make_scheduler=None) -> dict:
    """A stage's optimizer and scheduler, as keyword arguments of its constructor."""
    optimizer = make_optimizer(params)
    return dict(
        optimizer=optimizer, scheduler=make_scheduler(optimizer) if make_scheduler else None
    )


def _weight_stages(learners: list[Learner], stages: SGLStages, config: SGLConfig, shared: dict):
    """Every learner's V stage (K > 1) and W stage."""
    num = len(learners)
    v_stages, w_stages = [], []
    for k, learner in enumerate(learners):
        if num > 1:
            v_stages.append(
                stages.v(
                    k,
                    learner.v_net,
                    learner.arch,
                    **_optimization(
                        learner.v_net.parameters(), learner.v_optimizer, learner.v_scheduler
                    ),
                    betty_config=lower_problem_config(config, config.grad_clip_v),
                    **shared,
                )
            )
        peers = [Peer(j, other.v_net, other.arch) for j, other in enumerate(learners) if j != k]
        w_stages.append(
            stages.w(
                k,
                learner.w_net,
                learner.arch,
                peers,
                **_optimization(
                    learner.w_net.parameters(), learner.w_optimizer, learner.w_scheduler
                ),
                # Betty's warm-up on W delays the first call of W's uppers (the architectures).
                betty_config=lower_problem_config(
                    config, config.grad_clip_w, config.arch_warmup_steps
                ),
                **shared,
            )
        )
    return v_stages, w_stages


def build_sgl_problems(
    learners: Sequence[Learner],
    data: Mapping[str, Iterable | None],
    config: SGLConfig | None = None,
    stages: SGLStages = SGLStages(),
) -> tuple[list[SGLStage], Dependencies]:
    """The SGL graph for K = len(learners) learners, not yet run: (problems, dependencies).

    ``data`` maps ``"train"`` and ``"val"`` to re-iterables of (x, y) and ``"unlabeled"`` to x
    or (x, anything), None or absent for K = 1; an exhausted one restarts. ``problems`` holds
    the V stages (K > 1), W stages and architecture stages, in that order; ``dependencies`` is
    Betty's ``{"l2u": {...}, "u2l": {...}}``. Both may be extended with problems of one's own
    before ``engine_from_problems`` runs them (README, "Adding a level").
    """
    config = config or SGLConfig()
    learners = list(learners)
    _check_learners(learners, data)
    num = len(learners)
    register_solvers()
    batches = SharedBatches(
        {split: data.get(split) for split in DATA_SPLITS if num > 1 or split != "unlabeled"},
        channels_last=config.channels_last,
    )
    if config.channels_last:
        for learner in learners:
            for net in (learner.v_net, learner.w_net):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
    shared = dict(batches=batches, sgl=config, non_finite=NonFiniteWatch())
    v_stages, w_stages = _weight_stages(learners, stages, config, shared)
    hypergradient = hypergradient_strategy(config, w_stages, batches)
    arch_stages = [
        stages.arch(
            k,
            learner.arch,
            hypergradient,
            **_optimization(learner.arch.parameters(), learner.arch_optimizer),
            # Several hypergradient paths start from the same loss, so its graph is kept.
            betty_config=Config(retain_graph=True, gradient_clipping=config.grad_clip_arch),
            **shared,
        )
        for k, learner in enumerate(learners)
    ]
    if isinstance(hypergradient, OneSweep):
        hypergradient.arch_stages = list(arch_stages)
    record_unrolled_steps(config, v_stages, w_stages)
    if config.compile:
        for stage in v_stages + w_stages:
            stage.compiled_module = torch.compile(stage.module, backend=config.compile_backend)
    return v_stages + w_stages + arch_stages, sgl_dependencies(
        config, v_stages, w_stages, arch_stages
    )


def sgl_dependencies(config: SGLConfig, v_stages, w_stages, arch_stages) -> Dependencies:
    """The edges of Eq. 4 (module docstring)."""
    num = len(w_stages)
    l2u, u2l = {}, {}
    for k in range(num):
        if num > 1:
            l2u[v_stages[k]] = [w_stages[j] for j in range(num) if j != k]
        l2u[w_stages[k]] = list(arch_stages)
    if config.hypergrad.type != "first_order":
        for k in range(num):
            lowers = [w_stages[k]]
            if num > 1 and not config.detach_pseudo_labels:
                lowers.append(v_stages[k])
                if config.pseudo_label_arch_grad:
                    lowers += [w_stages[j] for j in range(num) if j != k]
            u2l[arch_stages[k]] = lowers
    return {"l2u": l2u, "u2l": u2l}


def _check_added_problems(problems: list, sgl_stage: SGLStage) -> None:
    for problem in problems:
        if not isinstance(problem, SGLStage):
            raise TypeError(
                f"problem {getattr(problem, 'name', problem)!r} is not an SGLStage: a problem "
                "added to the SGL graph subclasses sgl_betty.problems.SGLStage (its role and "
                "learner name it in engine.problem(role, k) and in engine.metrics())"
            )
        if problem.batches is not sgl_stage.batches:
            raise ValueError(
                f"problem {problem.name!r} reads other batches than the SGL stages: pass it "
                "batches=<an SGL stage>.batches, which the engine advances every step"
            )


def engine_from_problems(
    problems: Sequence,
    dependencies: Dependencies,
    train_iters: int = 1,
    valid_step: int | None = None,
    device: str | torch.device | None = None,
) -> SGLEngine:
    """The engine of the problems ``build_sgl_problems`` made, with any added to them.

    ``valid_step``: run ``engine.validation()`` every that many steps inside ``engine.run()``
    (None: never). Betty 0.2.1 rebuilds every optimizer from its class and defaults (dropping
    parameter groups) and every scheduler from its constructor's arguments; each problem keeps
    the optimizer and scheduler it was made with.
    """
    if train_iters < 1:
        raise ValueError(f"train_iters must be >= 1 (got {train_iters})")
    problems = list(problems)
    arch_stages = [p for p in problems if isinstance(p, ArchStage)]
    if not arch_stages:
        raise ValueError(
            "engine_from_problems needs the problems of build_sgl_problems (no architecture "
            "stage among them)"
        )
    _check_added_problems(problems, arch_stages[0])
    if device is None:
        device = resolve_device("auto")
    made_with = [(p.optimizer, p.scheduler) for p in problems]
    for problem in problems:
        problem.scheduler = None  # Betty's scheduler rebuild fails for some schedulers
    first = arch_stages[0]
    engine = SGLEngine(
        problems,
        EngineConfig(train_iters=train_iters, valid_step=valid_step or train_iters + 1),
        dependencies=dependencies,
        batches=first.batches,
        device=device,
        num_learners=len(arch_stages),
        non_finite=first.non_finite,
    )
    for problem, (optimizer, scheduler) in zip(problems, made_with):
        problem.optimizer, problem.scheduler = optimizer, scheduler
    config = first.sgl
    engine.precision_policy = describe_policy(
        config.autocast_dtype,
        config.hypergrad.type != "first_order",
        config.hypergrad.full_precision,
    )
    return engine


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
    """Build the SGL engine for K = len(learners) learners: ``build_sgl_problems`` then
    ``engine_from_problems``.

    ``train`` and ``val`` yield (x, y); ``unlabeled`` yields x or (x, anything) and may be None
    for K = 1. Any re-iterable works; an exhausted one restarts. ``valid_step``: run
    ``engine.validation()`` every that many steps inside ``engine.run()`` (None: never).
    """
    problems, dependencies = build_sgl_problems(
        learners, {"train": train, "val": val, "unlabeled": unlabeled}, config
    )
    return engine_from_problems(problems, dependencies, train_iters, valid_step, device)
