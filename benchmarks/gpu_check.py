"""The GPU check: the full-size search and evaluation on one CUDA GPU, in one command.

    make gpu-check                                   # on a GPU: full size, a few minutes
    python benchmarks/gpu_check.py --smoke           # the same rows at tiny sizes (a CPU)
    python benchmarks/gpu_check.py search.learners=[2] search.hypergrad=[unrolled] out=x.json

Options are ``key=value`` overrides of the schema below (``GpuCheckConfig``), as the recipes
take them; ``--smoke`` starts from the tiny sizes of ``SMOKE``. On a machine without a visible
GPU the check runs the smoke version and says so.

What it measures (one JSON object, the last line of standard output, also written to ``out``):

- ``search``: ``engine.step()`` of the recipe's search (its learners, optimizers and SGL config,
  built as ``benchmarks/cifar100.py`` builds them) at the paper's size (C=16, 8 cells, batch 64,
  32 px, 100 classes) on random batches in pinned memory, for K in ``search.learners`` and
  every hypergradient type of ``sgl_betty.config.HYPERGRAD_TYPES``, plus one bf16 autocast row
  (K = the largest, ``unrolled``). Per row: ``warmup`` steps (cuDNN picks its algorithms), then
  ``timed`` steps between CUDA events (``step_seconds``, their median ``seconds_per_step``,
  ``host_seconds_per_step`` from the host's clock over the same steps); one more step counted
  for host synchronisations: ``syncs_per_step`` by ``torch.cuda.set_sync_debug_mode`` (None
  on a CPU) and ``host_reads_per_step``, the reads of a tensor's value by the host (``item``,
  ``tolist``, ``cpu``, ``bool``..., and below Python every scalar read and device-to-host copy:
  ``sgl_betty.host_reads``), each a sync on a GPU: 0 for the search steps;
  ``peak_allocated_mb`` and ``peak_reserved_mb`` over the row (CUDA allocator; None on a CPU);
  ``descent_dtype`` and ``hypergradient_dtype``, the dtypes of learner 0's W-network outputs
  during its own descent step and during the hypergradient (bf16 and float32 in the bf16 row:
  the precision policy evaluates second-order terms in float32).
- ``evaluation``: ``eval.steps`` training steps of the evaluation network at the paper's size
  (20 cells, C=36, batch 96, auxiliary head, drop path, DARTS_V2) through ``EvalTrainer``, per
  precision in ``eval.precisions``; the same timing, memory and sync fields, and
  ``test_pass_syncs`` / ``test_pass_host_reads`` for one test pass over ``eval.test_batches``
  batches.
- ``end_to_end``: ``benchmarks/cifar100.py --stage all`` (search, then evaluation of the best
  learner) on the embedded synthetic data with ``end_to_end.preset``, on this device; its exit
  code, wall time and the figures of both summary.json files.
- ``wall_seconds`` of the whole check against ``budget_seconds``; ``errors`` lists every row
  that failed (the others still run). Exit code 0 when nothing failed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from sgl_betty.config import HYPERGRAD_TYPES
from sgl_betty.engine import build_sgl_engine
from sgl_betty.errors import ConfigError
from sgl_betty.evaluation import EvalTrainer, NetworkSpec, TrainingSettings
from sgl_betty.evaluation.trainer import AUTOCAST_DTYPES, EpochSums
from sgl_betty.experiment.config import load_config, sgl_config
from sgl_betty.experiment.methods import search_stages, stage_learners
from sgl_betty.experiment.overrides import load_overrides
from sgl_betty.genotypes import PUBLISHED, genotype_to_dict
from sgl_betty.host_reads import count_host_reads, host_resident_tensors
from sgl_betty.params import count_parameters_m
from sgl_betty.runtime import DistributedContext, configure_backends, machine_description
from sgl_betty.tracking.summaries import read_summary

ROOT = Path(__file__).resolve().parents[1]
# The paper's hypergradient, for the bf16 row.
BF16_HYPERGRAD = "unrolled"


@dataclass
class SearchCheck:
    learners: list[int] = field(default_factory=lambda: [1, 2])
    # None: every type in sgl_betty.config.HYPERGRAD_TYPES.
    hypergrad: list[str] | None = None
    init_channels: int = 16
    layers: int = 8
    # Intermediate nodes per cell (the recipes' search.steps).
    nodes: int = 4
    batch_size: int = 64
    image_size: int = 32
    num_classes: int = 100
    warmup: int = 2
    timed: int = 3
    bf16: bool = True


@dataclass
class EvalCheck:
    init_channels: int = 36
    layers: int = 20
    batch_size: int = 96
    image_size: int = 32
    num_classes: int = 100
    auxiliary: bool = True
    genotype: str = "DARTS_V2"
    drop_path_prob: float = 0.2
    warmup: int = 5
    steps: int = 50
    test_batches: int = 4
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"])


@dataclass
class EndToEndCheck:
    enabled: bool = True
    preset: str = "smoke"
    overrides: list[str] = field(default_factory=list)
    timeout_seconds: int = 300


@dataclass
class GpuCheckConfig:
    device: str = "auto"
    out: str = "gpu_check.json"
    seed: int = 0
    budget_seconds: float = 480.0
    search: SearchCheck = field(default_factory=SearchCheck)
    eval: EvalCheck = field(default_factory=EvalCheck)
    end_to_end: EndToEndCheck = field(default_factory=EndToEndCheck)


# Seconds on a CPU: every row and field, at the sizes of the tests.
SMOKE = {
    "search": dict(
        init_channels=4,
        layers=3,
        nodes=1,
        batch_size=4,
        image_size=8,
        num_classes=10,
        warmup=0,
        timed=2,
    ),
    "eval": dict(
        init_channels=4,
        layers=3,
        batch_size=4,
        image_size=8,
        num_classes=10,
        auxiliary=False,
        warmup=0,
        steps=2,
        test_batches=2,
    ),
    # The pipeline's plumbing, not the hypergradients (the search rows time those).
    "end_to_end": dict(preset="tiny", overrides=["hypergrad.type=first_order"]),
}


def parse_args(argv: list[str]) -> tuple[GpuCheckConfig, bool]:
    """The check's config from ``--smoke`` and ``key=value`` overrides; whether --smoke was given."""
    smoke = "--smoke" in argv
    overrides = [arg for arg in argv if arg != "--smoke"]
    layers = [SMOKE] if smoke else []
    cfg = load_overrides(GpuCheckConfig, overrides, *layers, example="--smoke or search.timed=5")
    unknown = [t for t in cfg.search.hypergrad or [] if t not in HYPERGRAD_TYPES]
    if unknown:
        raise ConfigError(f"unknown hypergradient types {unknown}; known: {list(HYPERGRAD_TYPES)}")
    bad = [p for p in cfg.eval.precisions if p not in AUTOCAST_DTYPES]
    if bad:
        raise ConfigError(f"eval.precisions {bad} unknown; choose from {list(AUTOCAST_DTYPES)}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r}: choose auto, cpu or cuda")
    return cfg, smoke


def log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- measurement


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], None], count: int, device: torch.device) -> dict:
    """``count`` calls of ``step``: each one's time between CUDA events (on a CPU, the host's
    clock), their median, and the host's time per step over all of them."""
    synchronize(device)
    started = time.perf_counter()
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
        events[0].record()
        for index in range(count):
            step()
            events[index + 1].record()
        synchronize(device)
        seconds = [events[i].elapsed_time(events[i + 1]) / 1000 for i in range(count)]
    else:
        seconds, last = [], started
        for _ in range(count):
            step()
            now = time.perf_counter()
            seconds.append(now - last)
            last = now
    host = (time.perf_counter() - started) / count
    return dict(
        step_seconds=seconds,
        seconds_per_step=statistics.median(seconds),
        host_seconds_per_step=host,
    )


@contextlib.contextmanager
def counting_syncs(device: torch.device, ignore=()) -> Iterator[dict]:
    """Counts, while the block runs, CUDA synchronisations (``syncs``: the sync debug mode's
    warnings; None on a CPU) and reads of tensor values by the host (``host_reads``:
    ``sgl_betty.host_reads``; ``ignore``: tensors that live on the host whatever the device).
    The counts are in the yielded dict once the block has finished."""
    counts: dict = {"syncs": None, "host_reads": 0}
    cuda = device.type == "cuda"
    previous = torch.cuda.get_sync_debug_mode() if cuda else None
    with count_host_reads(device, ignore) as reads:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield counts
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(previous)
    counts["host_reads"] = reads.count
    if cuda:
        counts["syncs"] = sum("synchroniz" in str(w.message) for w in caught)


class PeakMemory:
    """The CUDA allocator's peak allocated and reserved memory since ``start`` (None on a CPU)."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict:
        if self.device.type != "cuda":
            return dict(peak_allocated_mb=None, peak_reserved_mb=None)
        return dict(
            peak_allocated_mb=torch.cuda.max_memory_allocated(self.device) / 2**20,
            peak_reserved_mb=torch.cuda.max_memory_reserved(self.device) / 2**20,
        )


class SearchDtypes:
    """The dtypes of a W network's outputs during its descent and during the hypergradient."""

    def __init__(self, engine, net: torch.nn.Module):
        self.stage = engine.problem("w", 0)
        self.seen = {"descent": set(), "hypergradient": set()}
        self.handle = net.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        part = "descent" if self.stage.descending else "hypergradient"
        self.seen[part].add(str(output.dtype).removeprefix("torch."))

    def read(self) -> dict:
        self.handle.remove()
        return {
            f"{part}_dtype": ",".join(sorted(dtypes)) or None for part, dtypes in self.seen.items()
        }


class OutputDtype:
    """The dtype of a module's first output: what autocast made of the descent step's forward
    pass (the hypergradient's re-evaluations, later in a step, run in full precision)."""

    def __init__(self, module: torch.nn.Module):
        self.dtype: torch.dtype | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        output = output[0] if isinstance(output, tuple) else output
        if self.dtype is None:
            self.dtype = output.dtype

    def read(self) -> str | None:
        self.handle.remove()
        return None if self.dtype is None else str(self.dtype).removeprefix("torch.")


def random_batches(count: int, batch: int, size: int, classes: int, device, labeled=True):
    """Host batches as the recipes' loaders hand them over: pinned for a GPU."""
    generator = torch.Generator().manual_seed(count * 1000 + batch)
    pin = device.type == "cuda"
    batches = []
    for _ in range(count):
        images = torch.randn(batch, 3, size, size, generator=generator)
        labels = torch.randint(0, classes, (batch,), generator=generator)
        if pin:
            images, labels = images.pin_memory(), labels.pin_memory()
        batches.append((images, labels) if labeled else images)
    return batches


# ----------------------------------------------------------------------------- rows


def search_config(check: SearchCheck, learners: int, hypergrad: str, precision: str, device):
    """The recipe's config of a search at the check's size (the paper preset otherwise)."""
    return load_config(
        [
            "preset=paper",
            f"device={device.type}",
            f"learners={learners}",
            f"hypergrad.type={hypergrad}",
            f"search.precision={precision}",
            f"search.init_channels={check.init_channels}",
            f"search.layers={check.layers}",
            f"search.steps={check.nodes}",
            f"search.batch_size={check.batch_size}",
            "data.dataset=synthetic",
            "data.unlabeled=synthetic",
            f"data.image_size={check.image_size}",
        ]
    )


def search_row(check: SearchCheck, learners: int, hypergrad: str, precision: str, device):
    memory = PeakMemory(device)
    memory.start()
    cfg = search_config(check, learners, hypergrad, precision, device)
    stage = search_stages(cfg)[0]
    group = stage_learners(cfg, check.num_classes, stage, total_steps=10**6)
    shape = (2, check.batch_size, check.image_size, check.num_classes)
    train = random_batches(*shape, device)
    val = random_batches(*shape, device)
    unlabeled = random_batches(*shape, device, labeled=False) if learners > 1 else None
    engine = build_sgl_engine(
        group, train, val, unlabeled, sgl_config(cfg), train_iters=10**9, device=device
    )
    dtypes = SearchDtypes(engine, group[0].w_net)
    for _ in range(check.warmup):
        engine.step()
    row = timed_steps(engine.step, check.timed, device)
    with counting_syncs(
        device, host_resident_tensors(p.optimizer for p in engine.problems)
    ) as counts:
        engine.step()
    row.update(
        syncs_per_step=counts["syncs"],
        host_reads_per_step=counts["host_reads"],
        **dtypes.read(),
        **memory.read(),
    )
    losses = [value for key, value in engine.metrics().items() if key.endswith("train_loss")]
    row["finite_losses"] = bool(losses) and all(v == v and abs(v) != float("inf") for v in losses)
    return row


def eval_row(check: EvalCheck, precision: str, device: torch.device) -> dict:
    memory = PeakMemory(device)
    memory.start()
    spec = NetworkSpec(
        kind="cifar",
        init_channels=check.init_channels,
        num_classes=check.num_classes,
        layers=check.layers,
        auxiliary=check.auxiliary,
        genotype=genotype_to_dict(PUBLISHED[check.genotype]),
    )
    network = spec.build()
    # Halfway through a two-epoch schedule: drop path at half its final rate, as mid-training.
    settings = TrainingSettings(epochs=2, drop_path_prob=check.drop_path_prob, precision=precision)
    trainer = EvalTrainer(network, settings, DistributedContext(0, 1, 0, device))
    trainer.set_epoch(1)
    trainer.model.train()
    batches = random_batches(2, check.batch_size, check.image_size, check.num_classes, device)
    sums = EpochSums(device)
    dtype = OutputDtype(network.classifier)

    def step() -> None:
        trainer.train_step(*batches[sums.steps % len(batches)], sums)

    for _ in range(check.warmup):
        step()
    row = timed_steps(step, check.steps, device)
    with counting_syncs(device) as counts:
        step()
    row.update(
        steps=check.steps,
        images_per_second=check.batch_size / row["seconds_per_step"],
        syncs_per_step=counts["syncs"],
        host_reads_per_step=counts["host_reads"],
        logits_dtype=dtype.read(),
    )
    test = random_batches(
        check.test_batches, check.batch_size, check.image_size, check.num_classes, device
    )
    with counting_syncs(device) as counts:
        result = trainer.test(test)
    trained = trainer.finish_epoch(sums)
    row.update(
        test_pass_batches=check.test_batches,
        test_pass_syncs=counts["syncs"],
        test_pass_host_reads=counts["host_reads"],
        test_images=result.examples,
        train_loss=trained.loss,
        params_m=count_parameters_m(network),
        **memory.read(),
    )
    return row


def end_to_end(check: EndToEndCheck, device: torch.device) -> dict:
    """``benchmarks/cifar100.py --stage all`` on synthetic data, on ``device``."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        run = Path(work) / "run"
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "cifar100.py"),
            "--stage",
            "all",
            f"preset={check.preset}",
            f"device={device.type}",
            f"run.dir={run}",
            "run.progress=false",
            "tracking.figures=false",
            *check.overrides,
        ]
        started = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=check.timeout_seconds, cwd=work
        )
        result = dict(
            command=" ".join(["python", "benchmarks/cifar100.py", *command[2:]]).replace(
                str(run), "<tmp>/run"
            ),
            returncode=done.returncode,
            seconds=time.perf_counter() - started,
        )
        if done.returncode != 0:
            result["stderr_tail"] = done.stderr[-3000:]
            return result
        search = read_summary(run).to_dict()
        evaluations = sorted(run.glob("eval-*/summary.json"))
        evaluation = read_summary(evaluations[0].parent).to_dict() if evaluations else {}
    result["search"] = {
        key: search.get(key)
        for key in ("device", "steps", "seconds_per_step", "val_acc", "global_batch_size")
    }
    result["evaluation"] = {
        key: evaluation.get(key)
        for key in ("device", "epochs", "test_error", "test_images", "wall_seconds")
    }
    return result


# ----------------------------------------------------------------------------- driver


def attempt(errors: list[str], name: str, measure: Callable[[], dict], device) -> dict:
    """``measure()``, or the error it raised (recorded; the check goes on with the next row)."""
    try:
        return dict(measure(), error=None)
    except Exception as error:  # a GPU check reports every failure, then carries on
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        errors.append(f"{name}: {message}")
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
        return dict(error=message)


def run(cfg: GpuCheckConfig, device: torch.device, smoke: bool) -> dict:
    started = time.perf_counter()
    configure_backends(device, deterministic=False)  # as the recipes run by default
    types = list(cfg.search.hypergrad or HYPERGRAD_TYPES)
    rows = [(k, t, "fp32") for k in cfg.search.learners for t in types]
    if cfg.search.bf16:
        bf16_type = BF16_HYPERGRAD if BF16_HYPERGRAD in types else types[0]
        rows.append((max(cfg.search.learners), bf16_type, "bf16"))
    errors: list[str] = []
    search = []
    for learners, hypergrad, precision in rows:
        torch.manual_seed(cfg.seed)
        name = f"search K={learners} {hypergrad} {precision}"
        row = dict(K=learners, hypergrad=hypergrad, precision=precision)
        measure = functools.partial(search_row, cfg.search, learners, hypergrad, precision, device)
        row.update(attempt(errors, name, measure, device))
        log(f"{name}: {row.get('seconds_per_step', float('nan')):.4f} s/step")
        search.append(row)
    evaluation = []
    for precision in cfg.eval.precisions:
        torch.manual_seed(cfg.seed)
        name = f"evaluation {precision}"
        row = dict(precision=precision)
        measure = functools.partial(eval_row, cfg.eval, precision, device)
        row.update(attempt(errors, name, measure, device))
        log(f"{name}: {row.get('seconds_per_step', float('nan')):.4f} s/step")
        evaluation.append(row)
    pipeline = None
    if cfg.end_to_end.enabled:
        measure = functools.partial(end_to_end, cfg.end_to_end, device)
        pipeline = attempt(errors, "end_to_end", measure, device)
        if pipeline.get("returncode") not in (None, 0):
            errors.append(f"end_to_end: exit code {pipeline['returncode']}")
        log(f"end to end: exit {pipeline.get('returncode')} in {pipeline.get('seconds', 0):.1f} s")
    wall = time.perf_counter() - started
    return dict(
        smoke=smoke,
        device=str(device),
        machine=machine_description(device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
        hypergrad_types=types,
        config=OmegaConf.to_container(cfg),
        search=search,
        evaluation=evaluation,
        end_to_end=pipeline,
        wall_seconds=wall,
        budget_seconds=cfg.budget_seconds,
        within_budget=wall <= cfg.budget_seconds,
        errors=errors,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0
    try:
        cfg, smoke = parse_args(argv)
        wanted = cfg.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        if wanted == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES)")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = torch.device(wanted)
    if device.type == "cpu" and not smoke:
        log("no GPU in use: running the small version (--smoke); full sizes need a CUDA GPU")
        cfg, smoke = parse_args(["--smoke", *argv])
    log(f"device {device}, {'smoke' if smoke else 'full'} sizes")
    result = run(cfg, device, smoke)
    Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"{len(result['errors'])} error(s), {result['wall_seconds']:.0f} s; written to {cfg.out}")
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
