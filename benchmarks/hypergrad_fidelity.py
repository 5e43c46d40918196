"""How close each hypergradient solver gets to the exact hypergradient of Eq. 4.

On the closed-form reference problem (``sgl_betty.reference``: gated linear learners, squared
losses, ridge), V and W are run to convergence with the architecture fixed; then each solver's
architecture gradient is compared with autograd through the closed-form solution.

    python benchmarks/hypergrad_fidelity.py [--learners 2 3] [--repeats 10]

Prints a Markdown table: cosine similarity and relative error per solver setting, and the
median wall time of one full SGL step (V, W and architecture stages) with that solver.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from sgl_betty import HypergradConfig
from sgl_betty.reference import Problem, converged_engine


def solver_settings(problem: Problem):
    alpha = 1.0 / problem.largest_curvature()
    yield "first_order", HypergradConfig(type="first_order")
    yield "darts", HypergradConfig(type="darts")
    yield "unrolled", HypergradConfig(type="unrolled")
    for iterations in (1, 5, 20, 100, 300):
        yield (
            f"neumann (it={iterations})",
            HypergradConfig(type="neumann", neumann_iterations=iterations, neumann_alpha=alpha),
        )
    for iterations in (1, 2, 4, 8):
        yield f"cg (it={iterations})", HypergradConfig(type="cg", cg_iterations=iterations)


def measure(problem: Problem, hypergrad: HypergradConfig, repeats: int):
    engine = converged_engine(problem, hypergrad)
    exact = problem.exact_hypergradients()
    got = torch.cat([engine.last_hypergrad[k][0] for k in range(len(exact))])
    want = torch.cat(list(exact))
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
    error = ((got - want).norm() / want.norm()).item()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return cosine, error, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, float64, 1 thread"
    )
    print("| K | solver | cosine to exact | relative error | ms per SGL step |")
    print("|---|---|---|---|---|")
    for num in args.learners:
        problem = Problem.random(num, seed=args.seed)
        for name, hypergrad in solver_settings(problem):
            cosine, error, seconds = measure(problem, hypergrad, args.repeats)
            print(
                f"| {num} | {name} | {cosine:.6f} | {error:.2e} | {1000 * seconds:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
