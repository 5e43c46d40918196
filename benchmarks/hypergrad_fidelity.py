"""How close each hypergradient type gets to its exact value.

    python benchmarks/hypergrad_fidelity.py                      # problem=closed_form
    python benchmarks/hypergrad_fidelity.py problem=supernet     # the DARTS supernet
    python benchmarks/hypergrad_fidelity.py problem=supernet learners=[1] precisions=[fp32]

``problem=closed_form``: the reference problem (``sgl_betty.reference``: gated linear learners,
squared losses, ridge) with V and W run to convergence and the architecture fixed; each type's
architecture gradient against autograd through the closed-form solution of Eq. 4, and the median
time of one SGL step.

``problem=supernet``: the DARTS supernet (``supernet_fidelity.py``): every type at every
precision against the float64 one-step (Eq. 5-11) and implicit references, the linear-solve
residuals of Neumann and CG, and a radius sweep of the finite-difference product.

Prints Markdown tables; the last line is one JSON object with every row.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from omegaconf import OmegaConf

from sgl_betty import HypergradConfig
from sgl_betty.errors import ConfigError
from sgl_betty.experiment.overrides import load_overrides
from sgl_betty.reference import Problem, converged_engine


@dataclass
class FidelityConfig:
    problem: str = "closed_form"
    # None: 2 and 3 learners on the closed-form problem, 1 and 2 on the supernet.
    learners: list[int] | None = None
    seed: int = 0
    threads: int = 1
    # closed_form
    repeats: int = 10
    # supernet (C=4, 5 cells, 8 px, batch 4, 10 classes: about half an hour on one CPU core)
    init_channels: int = 4
    layers: int = 5
    steps: int = 4
    image_size: int = 8
    batch_size: int = 4
    num_classes: int = 10
    warmup_steps: int = 3
    precisions: list[str] = field(default_factory=lambda: ["float64", "fp32", "tf32", "bf16"])
    radii: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
    # None: every type; else labels as printed ("unrolled exact", "cg (it=4)", ...)
    types: list[str] | None = None
    # Neumann's step: the weights' learning rate (alpha * curvature must stay below 2).
    neumann_alpha: float = 0.025
    reference_tol: float = 1e-10
    reference_iterations: int = 300


def closed_form_settings(problem: Problem):
    alpha = 1.0 / problem.largest_curvature()
    yield "first_order", HypergradConfig(type="first_order")
    yield "darts", HypergradConfig(type="darts")
    yield "unrolled", HypergradConfig(type="unrolled")
    yield "unrolled_post_step", HypergradConfig(type="unrolled_post_step")
    for iterations in (1, 5, 20, 100, 300):
        yield (
            f"neumann (it={iterations})",
            HypergradConfig(type="neumann", neumann_iterations=iterations, neumann_alpha=alpha),
        )
    for iterations in (1, 2, 4, 8):
        yield f"cg (it={iterations})", HypergradConfig(type="cg", cg_iterations=iterations)


def closed_form(config: FidelityConfig) -> list[dict]:
    print("| K | solver | cosine to exact | relative error | ms per SGL step |")
    print("|---|---|---|---|---|")
    rows = []
    for num in config.learners or [2, 3]:
        problem = Problem.random(num, seed=config.seed)
        exact = torch.cat(list(problem.exact_hypergradients()))
        for name, hypergrad in closed_form_settings(problem):
            engine = converged_engine(problem, hypergrad)
            got = torch.cat([engine.last_hypergrad[k][0] for k in range(num)])
            cosine = torch.nn.functional.cosine_similarity(got, exact, dim=0).item()
            error = ((got - exact).norm() / exact.norm()).item()
            times = []
            for _ in range(config.repeats):
                start = time.perf_counter()
                engine.step()
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            print(
                f"| {num} | {name} | {cosine:.6f} | {error:.2e} | {1000 * seconds:.2f} |",
                flush=True,
            )
            rows.append(dict(K=num, type=name, cosine=cosine, error=error, seconds=seconds))
    return rows


def _number(value):
    return "-" if value is None else f"{value:.3g}"


def supernet(config: FidelityConfig) -> list[dict]:
    import supernet_fidelity as sf

    sf.PRECISIONS = tuple(p for p in sf.PRECISIONS if p in config.precisions)
    rows = []
    for num in config.learners or [1, 2]:
        setup = sf.SupernetSetup(
            learners=num,
            init_channels=config.init_channels,
            layers=config.layers,
            steps=config.steps,
            image_size=config.image_size,
            batch_size=config.batch_size,
            num_classes=config.num_classes,
            warmup_steps=config.warmup_steps,
            seed=config.seed,
        )
        net = sf.Supernet(setup)
        one_step = net.one_step_reference()
        implicit, achieved = net.implicit_reference(
            config.reference_tol, config.reference_iterations
        )
        curvature = net.curvature()
        print(
            f"\nK = {num}: implicit reference solved to a relative residual of {achieved:.1e}; "
            f"learner 0's W Hessian has eigenvalues from {curvature['smallest']:.3g} to "
            f"{curvature['largest']:.3g}"
        )
        rows.append({"kind": "curvature", "K": num, "reference_residual": achieved, **curvature})
        print(
            "| K | precision | policy | type | cosine one-step | error one-step "
            "| cosine implicit | error implicit | solve residual |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for row in sf.fidelity_rows(net, one_step, implicit, config.neumann_alpha, config.types):
            row["kind"] = "fidelity"
            rows.append(row)
            head = f"| {num} | {row['precision']} | {'on' if row['policy'] else 'off'} | {row['type']} "
            if row["diverged"]:
                print(head + "| non-finite (NonFiniteError) | inf | - | inf | inf |", flush=True)
                continue
            print(
                head + f"| {row['cosine_one_step']:.4f} | {row['error_one_step']:.2e} "
                f"| {row['cosine_implicit']:.4f} | {row['error_implicit']:.2e} "
                f"| {_number(row['residual'])} |",
                flush=True,
            )
        print(
            "\n| K | radius R | precision | cosine to exact product | relative error | perturbed weights that survive rounding |"
        )
        print("|---|---|---|---|---|---|")
        for row in sf.radius_rows(net, config.radii):
            row["kind"] = "radius"
            rows.append(row)
            print(
                f"| {num} | {row['radius']:g} | {row['precision']} | {row['cosine_to_exact']:.4f} "
                f"| {row['error_to_exact']:.2e} | {100 * row['surviving']:.2f}% |",
                flush=True,
            )
    return rows


def load(argv: list[str]) -> FidelityConfig:
    cfg = load_overrides(FidelityConfig, argv, example="problem=supernet")
    config = FidelityConfig(**OmegaConf.to_container(cfg))
    if config.problem not in ("closed_form", "supernet"):
        raise ConfigError(f"problem={config.problem!r}; choose closed_form or supernet")
    if config.problem == "supernet":
        import supernet_fidelity as sf

        unknown = sorted(set(config.precisions) - set(sf.PRECISIONS))
        if unknown:
            known = ", ".join(sf.PRECISIONS)
            raise ConfigError(f"precisions: unknown {unknown}; choose from {known}")
    return config


def main(argv: list[str]) -> int:
    try:
        config = load(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(config.threads)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{config.threads} thread(s); {config.problem}"
    )
    rows = closed_form(config) if config.problem == "closed_form" else supernet(config)
    print(json.dumps({"config": asdict(config), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
