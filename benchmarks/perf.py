"""What one SGL step costs, measured: time against one supernet forward + backward timed in the
same run, FLOPs and aten ops as executed, and peak memory, per search space, K and hypergradient.

    python benchmarks/perf.py                                   # preset=default, every row
    python benchmarks/perf.py threads=1 repeats=3 spaces=[darts] learners=[1,2]
    python benchmarks/perf.py preset=tiny hypergrad=[darts,neumann] device=cuda

Options are ``key=value`` overrides of ``PerfConfig`` (the recipes' OmegaConf syntax: lists as
``[a,b]``), on top of a preset (``default``: DARTS space at C=8, 5 cells, 32 px, batch 16, 100
classes; ``tiny``: the tests' seconds-long size; ``paper``: C=16, 8 cells, batch 64, for a GPU).

Rows: for every search space in ``spaces`` (darts, pc_darts, p_darts, darts_minus: each built as
the recipes build it, ``sgl_betty.experiment.methods``, with the recipe's optimizers and
schedules), a ``supernet`` row (the unit) and, for every K in ``learners`` and every type in
``hypergrad`` (``sgl_betty.config.HYPERGRAD_TYPES`` and ``unrolled_exact``), one
``engine.step()`` of ``build_sgl_engine`` on random batches. DARTS-'s auxiliary skip weight and
P-DARTS's skip dropout are set for search progress ``progress``.

How each row is measured:

1. Memory: ``warmup`` steps and the counted step (below) after building the row's engine; the
   peak over them minus the memory in use before the engine was built (so it includes the
   row's networks, optimizer states and activations). CUDA: ``max_memory_allocated`` and
   ``max_memory_reserved``. CPU: the peak resident set size (Linux ``VmHWM``, reset through
   ``/proc/self/clear_refs``; without it ``ru_maxrss`` growth, a lower bound).
2. Counts: one step under ``OpCounter``, a ``TorchDispatchMode`` that sees every aten op the
   step executes: ``aten_ops``; FLOPs by ``torch.utils.flop_counter``'s formulas (convolutions
   and matrix products, with the backward's ``output_mask``, so a backward that skips the
   weight gradients counts less); convolution calls. Each op is attributed to the forward (no
   backward running), to a first-order backward, or to a second-order backward: a backward
   that runs through the derivative of a backward formula (an autograd node such as
   ``ConvolutionBackwardBackward0``, which only a graph recorded by a ``create_graph=True``
   backward contains), i.e. a Hessian-vector or mixed second-derivative product.
   ``backwards`` and ``second_order`` count those backward calls (autograd graph tasks);
   ``forwards`` counts network forward calls (hooks on every V and W network). Nothing is
   derived from the code's structure.
3. Time: the unit and the step alternate, ``unit, step, unit, step, ..., unit`` (``repeats``
   steps); each step's time is divided by the mean of the two units around it, so a load change
   on a shared machine moves both. ``time_units`` is the median of these ratios, with their
   ``min`` and ``max``. CUDA: CUDA events around each call, ``torch.cuda.synchronize`` after.
   CPU: also ``cpu_time_units``, the same ratios of process CPU time: with ``threads=1`` other
   processes on a shared machine slow the clock but barely this process's CPU time (they still
   share caches and memory bandwidth), so it is the steadier figure there.

The unit (``supernet`` row): one forward of the space's search network on a batch, the
cross-entropy, and the backward into its weights and architecture parameters; its FLOPs are
counted the same way.

Columns: ``flop_units`` = the step's FLOPs / the unit's FLOPs; ``overhead`` = seconds per step /
(``flop_units`` x the unit's seconds) = ``time_units / flop_units``: 1 means the step runs as
fast per FLOP as a plain forward + backward. ``floor_units``: the FLOPs of the fewest passes
the step's algorithm needs (``floor_passes``), each kind of pass measured by running it on the
unit's network (``measure_pass_kinds``); ``flop_units / floor_units`` is what the
implementation executes beyond that.

The floor (per step; K learners; "graphs" of a W loss: its labelled and unlabelled forwards):

- descent: K = 1: W F + Bw; K >= 2: V K(F + Bw), W K(2F + 2Bw), each V's pseudo-labels once (K F);
- validation: K(F + B), B into W and A (first_order: into A only, Ba);
- hypergradient, per V and W solve, per graph of its loss (V: 1; W: 2, K = 1: 1):
  finite differences (darts, unrolled, unrolled_post_step) 2(F + Ba), the backward into the
  architecture and the pseudo-labels only; unrolled_exact F + Bg + Sa; neumann and cg with i
  iterations F + Bg + i Sw + Sa (with ``one_graph_at_a_time``, i (F + Bg) more per W solve:
  each product after the first rebuilds one of its two graphs); K >= 2 adds one backward B
  through each V's pseudo-label graph (its graph kept from the W stage: no forward) for the
  summed pseudo-label gradient.

Pass kinds: F forward; Bw backward into the weights; Ba into the architecture only (no weight
gradients); B into both; Bg into the weights with ``create_graph``; Sw a Hessian-vector product
over a Bg graph; Sa the mixed product d/dA (grad_w L . v) over a Bg graph. Bg, Sw and Sa run
their forward inside ``second_order_pass()``, as the solvers do (``second_order_conv=false``:
PyTorch's double backward of the convolutions, for comparison).

The last line of standard output is one JSON object (config, device, threads, backend flags,
load averages, rows); the table before it is Markdown.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from sgl_betty.config import HYPERGRAD_TYPES, IMPLICIT_TYPES
from sgl_betty.errors import ConfigError
from sgl_betty.experiment.overrides import load_overrides
from sgl_betty.search_space.second_order_conv import Conv2d, second_order_pass

HYPERGRADS = (*HYPERGRAD_TYPES, "unrolled_exact")
SPACES = ("darts", "pc_darts", "p_darts", "darts_minus")
FINITE_DIFFERENCE = ("darts", "unrolled", "unrolled_post_step")


@dataclass
class PerfConfig:
    preset: str = "default"
    spaces: list[str] = field(default_factory=lambda: list(SPACES))
    learners: list[int] = field(default_factory=lambda: [1, 2])
    hypergrad: list[str] = field(default_factory=lambda: list(HYPERGRADS))
    init_channels: int = 8
    layers: int = 5
    # Intermediate nodes per cell (the recipes' search.steps).
    steps: int = 4
    image_size: int = 32
    batch_size: int = 16
    num_classes: int = 100
    neumann_iterations: int = 1
    cg_iterations: int = 1
    pseudo_label_arch_grad: bool = True
    detach_pseudo_labels: bool = False
    # The neumann and cg rows with HypergradConfig.one_graph_at_a_time (the other rows ignore it).
    one_graph_at_a_time: bool = False
    # Search progress in [0, 1) for DARTS-'s auxiliary skip weight and P-DARTS's skip dropout.
    progress: float = 0.5
    repeats: int = 5
    warmup: int = 1
    batches: int = 4
    seed: int = 0
    device: str = "cpu"
    # 0: torch's default.
    threads: int = 0
    channels_last: bool = False
    bf16: bool = False
    # false: PyTorch's own double backward of convolutions in the solvers' products, instead of
    # sgl_betty.search_space.second_order_conv's (the comparison in BENCHMARKS.md).
    second_order_conv: bool = True


PRESETS = {
    "default": {},
    # The tests' size: seconds on a CPU.
    "tiny": dict(
        init_channels=4,
        layers=3,
        steps=1,
        image_size=8,
        batch_size=4,
        num_classes=10,
        repeats=2,
        warmup=1,
        batches=2,
    ),
    # The paper's search network (C = 16, 8 cells, batch 64): for a GPU.
    "paper": dict(init_channels=16, layers=8, batch_size=64),
}


def load(argv: list[str]) -> PerfConfig:
    """The run's config: ``PerfConfig`` defaults <- the preset <- ``key=value`` overrides."""
    preset = str(load_overrides(PerfConfig, argv, example="learners=[1,2]").preset)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    cfg = load_overrides(PerfConfig, argv, PRESETS[preset], example="learners=[1,2]")
    config = PerfConfig(**OmegaConf.to_container(cfg))
    check(config)
    return config


def check(cfg: PerfConfig) -> None:
    for name, allowed, given in (
        ("hypergrad", HYPERGRADS, cfg.hypergrad),
        ("spaces", SPACES, cfg.spaces),
    ):
        unknown = [item for item in given if item not in allowed]
        if unknown:
            raise ConfigError(f"{name}: unknown {unknown}; choose from {', '.join(allowed)}")
    if not cfg.learners or any(k < 1 for k in cfg.learners):
        raise ConfigError("learners: every K must be >= 1, e.g. learners=[1,2]")
    for key in ("repeats", "batches", "init_channels", "layers", "batch_size", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1")
    if cfg.warmup < 0 or cfg.threads < 0 or cfg.neumann_iterations < 0 or cfg.cg_iterations < 1:
        raise ConfigError("warmup, threads, neumann_iterations >= 0 and cg_iterations >= 1")
    if not 0.0 <= cfg.progress < 1.0:
        raise ConfigError(f"progress={cfg.progress} must be in [0, 1)")
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or auto (got {cfg.device!r})")


# ----------------------------------------------------------------------------- counting

aten = torch.ops.aten
# The autograd node of a backward formula's own derivative (ConvolutionBackwardBackward0,
# ThresholdBackwardBackward0, ...): only a graph recorded by a create_graph backward has one.
SECOND_ORDER_NODE = re.compile(r"Backward.*Backward")


def op_flops(packet, args, kwargs, out) -> int:
    """``torch.utils.flop_counter``'s count of one op, except that the weight gradient of a
    grouped convolution, plain or transposed, is divided by its groups (the library's formula
    ignores them, which counts a depthwise convolution's weight gradient ``channels`` times
    over)."""
    if packet not in flop_registry:
        return 0
    formula = flop_registry[packet]
    if packet is not aten.convolution_backward or args[9] == 1:
        return int(formula(*args, **kwargs, out_val=out))
    grad_input, grad_weight, grad_bias = args[10]
    inputs = formula(*args[:10], [grad_input, False, False], out_val=out)
    weights = formula(*args[:10], [False, grad_weight, False], out_val=out)
    return int(inputs + weights // args[9])


@dataclass
class PhaseCounts:
    aten_ops: int = 0
    flops: int = 0
    convolutions: int = 0
    convolution_backwards: int = 0

    def add(self, other: PhaseCounts) -> None:
        for name in ("aten_ops", "flops", "convolutions", "convolution_backwards"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class OpCounter(TorchDispatchMode):
    """Counts what runs while it is active: aten ops, FLOPs and convolutions, split into the
    forward, first-order backward calls and second-order backward calls."""

    def __init__(self, networks=()):
        super().__init__()
        self.forward = PhaseCounts()
        self._tasks: dict[int, PhaseCounts] = {}
        self._second_order: set[int] = set()
        self.network_forwards = 0
        self._handles = [net.register_forward_pre_hook(self._on_forward) for net in networks]

    def _on_forward(self, module, args):
        self.network_forwards += 1

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        task = torch._C._current_graph_task_id()
        if task < 0:
            counts = self.forward
        else:
            counts = self._tasks.setdefault(task, PhaseCounts())
            if task not in self._second_order:
                node = torch._C._current_autograd_node()
                if node is not None and SECOND_ORDER_NODE.search(type(node).__name__):
                    self._second_order.add(task)
        counts.aten_ops += 1
        packet = func._overloadpacket
        counts.flops += op_flops(packet, args, kwargs, out)
        if packet is aten.convolution:
            counts.convolutions += 1
        elif packet is aten.convolution_backward:
            counts.convolution_backwards += 1
        return out

    def phase(self, second_order: bool) -> tuple[PhaseCounts, int]:
        """The summed counts of the first-order (or second-order) backward calls, and how many."""
        total, calls = PhaseCounts(), 0
        for task, counts in self._tasks.items():
            if (task in self._second_order) == second_order:
                total.add(counts)
                calls += 1
        return total, calls

    def summary(self) -> dict:
        backward, backwards = self.phase(second_order=False)
        second, second_calls = self.phase(second_order=True)
        phases = {"forward": self.forward, "backward": backward, "second_order": second}
        return dict(
            forwards=self.network_forwards,
            backwards=backwards,
            second_order=second_calls,
            aten_ops=sum(p.aten_ops for p in phases.values()),
            flops=sum(p.flops for p in phases.values()),
            by_phase={name: asdict(p) for name, p in phases.items()},
        )


def count(fn, networks=()) -> dict:
    with OpCounter(networks) as counter:
        fn()
    return counter.summary()


# ----------------------------------------------------------------------------- the floor


def floor_passes(K: int, hypergrad: str, cfg: PerfConfig) -> Counter:
    """The passes the step's algorithm needs, each quantity once (module docstring)."""
    c = Counter()
    if K == 1:
        c.update(F=1, Bw=1)
    else:
        c.update(F=4 * K, Bw=3 * K)  # V: F + Bw; W: 2F + 2Bw; pseudo-labels: F
    first_order = hypergrad == "first_order"
    c.update(F=K, **{"Ba" if first_order else "B": K})
    if first_order:
        return c
    peers = K > 1 and not cfg.detach_pseudo_labels
    graphs = [2 if K > 1 else 1] * K + ([1] * K if peers else [])  # W solves, then V solves
    iterations = cfg.cg_iterations if hypergrad == "cg" else cfg.neumann_iterations
    for n in graphs:
        if hypergrad in FINITE_DIFFERENCE:
            c.update(F=2 * n, Ba=2 * n)
        elif hypergrad == "unrolled_exact":
            c.update(F=n, Bg=n, Sa=n)
        else:
            c.update(F=n, Bg=n, Sw=iterations * n, Sa=n)
            if cfg.one_graph_at_a_time and n > 1:  # every product after the first rebuilds one
                c.update(F=iterations * (n - 1), Bg=iterations * (n - 1))
    if peers:
        c.update(B=K)  # through each V's pseudo-label graph, for the summed gradient
    return c


def measure_pass_kinds(net, arch, batch) -> dict[str, int]:
    """FLOPs of each pass kind of ``floor_passes``, measured by running it on ``net``."""
    x, y = batch
    weights, alphas = list(net.parameters()), list(arch.parameters())

    def loss():
        return F.cross_entropy(net(x, arch()), y)

    def recorded_loss():  # a forward the solvers differentiate twice, as they run it
        with second_order_pass():
            return loss()

    def run(kind):
        def backward(inputs):
            def fn():
                torch.autograd.grad(loss(), inputs)

            return fn

        def second(targets):
            def fn():
                grads = torch.autograd.grad(recorded_loss(), weights, create_graph=True)
                vector = [torch.ones_like(g) for g in grads]
                torch.autograd.grad(grads, targets, grad_outputs=vector, allow_unused=True)

            return fn

        return {
            "Bw": backward(weights),
            "Ba": backward(alphas),
            "B": backward(weights + alphas),
            "Bg": lambda: torch.autograd.grad(recorded_loss(), weights, create_graph=True),
            "Sw": second(weights),
            "Sa": second(alphas),
        }[kind]

    forward = count(loss)["flops"]
    kinds = {"F": forward}
    for kind in ("Bw", "Ba", "B", "Bg"):
        kinds[kind] = count(run(kind))["flops"] - forward
    for kind in ("Sw", "Sa"):
        kinds[kind] = count(run(kind))["by_phase"]["second_order"]["flops"]
    return kinds


def floor_flops(passes: Counter, kinds: dict[str, int]) -> int:
    return sum(number * kinds[kind] for kind, number in passes.items())


# ----------------------------------------------------------------------------- measurement


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


LIBC = _libc()


class Memory:
    """Peak memory of a row: the CUDA allocator's statistics or the process's resident set."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.method = "cuda_max_memory_allocated"
        elif self._reset_hwm():
            self.method = "vmhwm_reset"
        else:
            self.method = "ru_maxrss_growth"
        self.base = 0

    @staticmethod
    def _status(name: str) -> int | None:
        try:
            match = re.search(rf"^{name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        except OSError:
            return None
        return int(match.group(1)) * 1024 if match else None

    def _reset_hwm(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        hwm, rss = self._status("VmHWM"), self._status("VmRSS")
        return hwm is not None and rss is not None and hwm <= rss * 1.05 + (1 << 20)

    @staticmethod
    def _maxrss() -> int:
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.reserved_base = torch.cuda.memory_reserved(self.device)
            return
        if LIBC is not None:
            LIBC.malloc_trim(0)  # give freed heap back, so the next row's growth is visible
        if self.method == "vmhwm_reset":
            self._reset_hwm()
            self.base = self._status("VmRSS")
        else:
            self.base = self._maxrss()

    def peak(self) -> dict:
        mb = 2**20
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            allocated = torch.cuda.max_memory_allocated(self.device) - self.base
            reserved = torch.cuda.max_memory_reserved(self.device) - self.reserved_base
            return dict(peak_memory_mb=allocated / mb, peak_reserved_mb=max(reserved, 0) / mb)
        peak = self._status("VmHWM") if self.method == "vmhwm_reset" else self._maxrss()
        return dict(peak_memory_mb=max(peak - self.base, 0) / mb, peak_reserved_mb=None)


class Timer:
    """Seconds of one call: CUDA events and a synchronize on a GPU, the host clock otherwise;
    and on a CPU the process's CPU seconds over the call (None on a GPU), which other processes
    on a shared machine do not inflate the way they inflate the clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self, fn) -> tuple[float, float | None]:
        if not self.cuda:
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            return time.perf_counter() - start, time.process_time() - cpu
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(self.device)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize(self.device)
        return begin.elapsed_time(end) / 1000, None


def _ratios(steps: list, units: list) -> list[float]:
    return [s / ((a + b) / 2) for s, a, b in zip(steps, units, units[1:])]


def interleaved(unit, step, repeats: int, timer: Timer) -> dict:
    """unit, step, unit, ..., step, unit: each step over the mean of the units around it, by the
    clock (``time_units``) and, on a CPU, by CPU time (``cpu_time_units``)."""
    units = [timer(unit)]
    steps = []
    for _ in range(repeats):
        steps.append(timer(step))
        units.append(timer(unit))
    timing = {}
    for name, index in (("time", 0), ("cpu_time", 1)):
        step_times, unit_times = [t[index] for t in steps], [t[index] for t in units]
        if step_times[0] is None:
            timing.update({f"{name}_units": None, f"{name}_unit_ratios": None})
            continue
        ratios = _ratios(step_times, unit_times)
        prefix = "" if name == "time" else "cpu_"
        timing.update(
            {
                f"{prefix}seconds_per_step": statistics.median(step_times),
                f"{prefix}unit_seconds": statistics.median(unit_times),
                f"{name}_units": statistics.median(ratios),
                f"{name}_units_min": min(ratios),
                f"{name}_units_max": max(ratios),
                f"{name}_unit_ratios": ratios,
            }
        )
    return timing


def make_data(cfg: PerfConfig, device: torch.device):
    g = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)

    def images():
        x = torch.randn(shape, generator=g).to(device)
        return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x

    def labeled():
        return [
            (images(), torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g).to(device))
            for _ in range(cfg.batches)
        ]

    train, val = labeled(), labeled()
    return train, val, [images() for _ in range(cfg.batches)]


def recipe_config(space: str, K: int, hypergrad: str, cfg: PerfConfig, device: torch.device):
    """The recipes' run config of this row (their builders, optimizers and schedules)."""
    from sgl_betty.experiment.config import load_config

    overrides = [
        "preset=paper",
        f"device={device.type}",
        f"learners={K}",
        f"hypergrad.type={'unrolled' if hypergrad == 'unrolled_exact' else hypergrad}",
        f"hypergrad.unrolled_exact={hypergrad == 'unrolled_exact'}",
        f"hypergrad.neumann_iterations={cfg.neumann_iterations}",
        f"hypergrad.cg_iterations={cfg.cg_iterations}",
        f"search.method={space}",
        f"search.init_channels={cfg.init_channels}",
        f"search.layers={cfg.layers}",
        f"search.steps={cfg.steps}",
        f"search.batch_size={cfg.batch_size}",
        "search.arch_warmup_epochs=0",
        f"search.pseudo_label_arch_grad={cfg.pseudo_label_arch_grad}",
        f"search.detach_pseudo_labels={cfg.detach_pseudo_labels}",
        f"hypergrad.one_graph_at_a_time={cfg.one_graph_at_a_time and hypergrad in IMPLICIT_TYPES}",
        f"search.precision={'bf16' if cfg.bf16 else 'fp32'}",
        f"search.channels_last={cfg.channels_last}",
        "data.dataset=synthetic",
        "data.unlabeled=synthetic",
        f"data.image_size={cfg.image_size}",
    ]
    try:
        return load_config(overrides)
    except ConfigError as error:
        raise ConfigError(f"{space}: {error}") from None


def build_learners(space: str, K: int, hypergrad: str, cfg: PerfConfig, device: torch.device):
    from sgl_betty.experiment.methods import search_method, search_stages, stage_learners

    run = recipe_config(space, K, hypergrad, cfg, device)
    learners = stage_learners(run, cfg.num_classes, search_stages(run)[0], total_steps=10**6)
    hook = search_method(space).on_step
    if hook is not None:
        hook(learners, cfg.progress)
    return run, learners


def build_engine(space: str, K: int, hypergrad: str, cfg: PerfConfig, device, data):
    from sgl_betty.engine import build_sgl_engine
    from sgl_betty.experiment.config import sgl_config

    run, learners = build_learners(space, K, hypergrad, cfg, device)
    train, val, unlabeled = data
    engine = build_sgl_engine(
        learners,
        train,
        val,
        unlabeled if K > 1 else None,
        sgl_config(run),
        train_iters=10**9,
        device=device,
    )
    return engine, learners


class Unit:
    """One supernet forward and backward (into weights and architecture) of a space's W network."""

    def __init__(self, space: str, cfg: PerfConfig, device: torch.device, batch):
        torch.manual_seed(cfg.seed)
        _, (learner,) = build_learners(space, 1, "first_order", cfg, device)
        self.net, self.arch = learner.w_net.to(device), learner.arch.to(device)
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.batch = batch
        self.bf16 = cfg.bf16
        self.device = device
        self.params = list(self.net.parameters()) + list(self.arch.parameters())

    def __call__(self) -> None:
        x, y = self.batch
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.net(x, self.arch()), y)
        loss.backward()
        for p in self.params:
            p.grad = None


def backend_flags() -> dict:
    """TF32 and cuDNN settings in force (the per-backend fp32_precision API where it exists)."""
    flags = {"cudnn.benchmark": torch.backends.cudnn.benchmark}
    for name in ("cuda.matmul", "cudnn.conv", "mkldnn.conv", "mkldnn.matmul"):
        node = torch.backends
        for part in name.split("."):
            node = getattr(node, part, None)
        if node is not None and hasattr(node, "fp32_precision"):
            flags[f"{name}.fp32_precision"] = node.fp32_precision
    if len(flags) == 1:  # PyTorch < 2.9: the legacy flags
        flags["cudnn.allow_tf32"] = torch.backends.cudnn.allow_tf32
        flags["cuda.matmul.allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return flags


def prime(cfg: PerfConfig, device: torch.device, data) -> None:
    """One tiny engine step before any row, so that one-time costs (imports, allocator and
    thread-pool set-up) fall on no row."""
    primer = PerfConfig(**dict(asdict(cfg), init_channels=4, layers=3, steps=1))
    build_engine("darts", 1, "darts", primer, device, data)[0].step()


def measure_unit(space: str, cfg: PerfConfig, device, data, memory: Memory) -> tuple[Unit, dict]:
    memory.start()
    unit = Unit(space, cfg, device, data[0][0])
    for _ in range(cfg.warmup):
        unit()
    counts = count(unit, [unit.net])
    row = dict(method=space, K=1, hypergrad="none", **counts, **memory.peak())
    row["pass_kind_flops"] = measure_pass_kinds(unit.net, unit.arch, unit.batch)
    return unit, row


def measure_row(space, K, hypergrad, cfg, device, data, unit, unit_row, memory) -> dict:
    torch.manual_seed(cfg.seed)
    memory.start()
    engine, learners = build_engine(space, K, hypergrad, cfg, device, data)
    networks = [net for ln in learners for net in (ln.v_net, ln.w_net) if net is not None]
    for _ in range(cfg.warmup):
        engine.step()
    counts = count(engine.step, networks)
    peak = memory.peak()
    timing = interleaved(unit, engine.step, cfg.repeats, Timer(device))
    flop_units = counts["flops"] / unit_row["flops"]
    floor = floor_passes(K, hypergrad, cfg)
    del engine, learners, networks
    return dict(
        method=space,
        K=K,
        hypergrad=hypergrad,
        **timing,
        flop_units=flop_units,
        overhead=timing["time_units"] / flop_units,
        cpu_overhead=timing["cpu_time_units"] / flop_units if timing["cpu_time_units"] else None,
        floor_units=floor_flops(floor, unit_row["pass_kind_flops"]) / unit_row["flops"],
        floor_passes=dict(floor),
        **counts,
        **peak,
    )


# ----------------------------------------------------------------------------- output


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| method | K | hypergrad | s/step | time units (min-max) | CPU-time units (min-max) "
        "| FLOP units | floor units | overhead | forwards | backwards | second-order | aten ops "
        "| peak MB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]

    def spread(r, name):
        if r.get(f"{name}_units") is None:
            return "-"
        low, high = r[f"{name}_units_min"], r[f"{name}_units_max"]
        return f"{r[f'{name}_units']:.2f} ({low:.2f}-{high:.2f})"

    for r in rows:
        if r["hypergrad"] == "none":
            timing = f"| {r['unit_seconds']:.4f} | 1 | 1 | 1 | 1 | 1"
        else:
            timing = (
                f"| {r['seconds_per_step']:.4f} | {spread(r, 'time')} | {spread(r, 'cpu_time')} "
                f"| {r['flop_units']:.2f} | {r['floor_units']:.2f} | {r['overhead']:.2f}"
            )
        lines.append(
            f"| {r['method']} | {r['K']} | {r['hypergrad']} {timing} | {r['forwards']} "
            f"| {r['backwards']} | {r['second_order']} | {r['aten_ops']} "
            f"| {r['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible")
    return device


def log(message: str) -> None:
    print(f"perf: {message}", file=sys.stderr, flush=True)


@contextmanager
def convolutions_differentiated_twice_by(ours: bool):
    """``ours=False``: the search networks' convolutions are plain ``nn.Conv2d`` inside, so
    every second-order product runs PyTorch's double backward of the convolution."""
    saved = Conv2d.forward
    if not ours:
        Conv2d.forward = torch.nn.Conv2d.forward
    try:
        yield
    finally:
        Conv2d.forward = saved


def run(cfg: PerfConfig) -> dict:
    with convolutions_differentiated_twice_by(cfg.second_order_conv):
        return _run(cfg)


def _run(cfg: PerfConfig) -> dict:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    load_before = os.getloadavg()
    memory = Memory(device)
    data = make_data(cfg, device)
    prime(cfg, device, data)
    log(f"device={device} threads={torch.get_num_threads()} memory={memory.method}")
    rows = []
    for space in cfg.spaces:
        unit, unit_row = measure_unit(space, cfg, device, data, memory)
        unit_row["unit_seconds"] = statistics.median(Timer(device)(unit)[0] for _ in range(3))
        rows.append(unit_row)
        log(f"{space}: unit {unit_row['unit_seconds']:.4f} s, {unit_row['flops']:.3g} FLOP")
        for K in cfg.learners:
            for hypergrad in cfg.hypergrad:
                row = measure_row(space, K, hypergrad, cfg, device, data, unit, unit_row, memory)
                rows.append(row)
                log(
                    f"{space} K={K} {hypergrad}: {row['seconds_per_step']:.3f} s/step = "
                    f"{row['time_units']:.2f} units (CPU time {row['cpu_time_units'] or 0:.2f}; "
                    f"{row['flop_units']:.2f} by FLOPs, floor "
                    f"{row['floor_units']:.2f}), peak {row['peak_memory_mb']:.0f} MB"
                )
        del unit
    return dict(
        config=asdict(cfg),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        machine=f"{platform.machine()} {platform.processor()}".strip(),
        cpu_count=os.cpu_count(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        backend_flags=backend_flags(),
        load_average_before=list(load_before),
        load_average_after=list(os.getloadavg()),
        memory_method=memory.method,
        rows=rows,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0
    try:
        result = run(load(argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cfg = result["config"]
    print(
        f"# SGL step cost: preset={cfg['preset']} C={cfg['init_channels']} layers={cfg['layers']} "
        f"nodes={cfg['steps']} {cfg['image_size']}px batch={cfg['batch_size']} "
        f"classes={cfg['num_classes']} device={result['device']} threads={result['threads']} "
        f"repeats={cfg['repeats']} warmup={cfg['warmup']}"
    )
    load_text = " / ".join(
        ", ".join(f"{x:.2f}" for x in result[key])
        for key in ("load_average_before", "load_average_after")
    )
    print(f"# load average (1, 5, 15 min) before / after: {load_text}")
    print(f"# backend flags: {result['backend_flags']}; memory: {result['memory_method']}")
    print()
    print(markdown_table(result["rows"]))
    print()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
