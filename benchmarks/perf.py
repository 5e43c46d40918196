"""Wall time, pass count and peak memory of one SGL step, per hypergradient method and K.

    python benchmarks/perf.py [preset=default|tiny|paper] [key=value ...] [--device cuda]

Keys (all optional; ``--key value`` and ``--key=value`` work too):

    init_channels=8 layers=5 image_size=32 batch_size=16 num_classes=100 steps=4
    learners=1,2,3 hypergrad=first_order,darts,unrolled,neumann,cg
    neumann_iterations=1 cg_iterations=1 pseudo_label_arch_grad=true detach_pseudo_labels=false
    repeats=10 warmup=2 batches=4 seed=0 device=cpu|cuda|cuda:N|auto threads=0 (0: torch's default)
    channels_last=false bf16=false (channels-last memory format; bf16 autocast: meant for GPUs)

Everything runs in one process. Rows:

- ``supernet``: the unit. One ``SearchNetwork`` forward on a batch plus the cross-entropy
  backward into the weights and the architecture parameters (2 passes).
- ``single`` (K = 1) and ``sgl`` (K >= 2): one ``engine.step()`` of an engine built with
  ``build_sgl_engine`` on random data (``batches`` batches per split, cycled by the engine), for
  every hypergradient type; the median over ``repeats`` steps after ``warmup`` steps.

Columns: ``seconds_per_step``; ``passes`` (what the current code executes, derived below) and
``passes_floor`` (what the algorithm needs); ``overhead = seconds_per_step / (passes * unit)``
with ``unit = unit_seconds`` = the supernet row's time divided by its 2 passes, i.e. the time of
an average pass (a forward costs about a third of forward + backward, a backward two thirds);
``forwards`` (derived) and ``forwards_observed`` (supernet forward calls counted with hooks during
the timed steps, divided by ``repeats``: a check of the derivation's forward part);
``peak_memory_mb``: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the
row's networks were built; on CPU the peak resident set size of the process (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs`` before each row, after ``gc`` and ``malloc_trim``) minus
the resident set size at that moment. Where the peak cannot be reset the script falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` growth, which only sees new process-wide highs (a
lower bound; 0 for a row smaller than an earlier one); ``memory_method`` in the JSON says which.
Both include the row's networks, optimizer states and activations.

The last line of standard output is one JSON object: ``unit_seconds``, ``unit_fwd_bwd_seconds``,
``config``, ``threads``, ``memory_method`` and ``rows`` (method, K, hypergrad, seconds_per_step,
passes, overhead, peak_memory_mb, passes_floor, forwards, forwards_observed).

Pass counts
-----------

Convention. One pass = one supernet forward over one batch (F), or one backward through the
graph of one such forward (B; also when the backward records a graph, ``create_graph=True``).
A second-order product through the graph of one forward (an HVP, or the mixed derivative
d/dy (v . dL/dx) that ends an implicit solver) counts 2 passes (S = 2). All batches (D_tr, D_val,
D_u) have the same size. Costs below the network's size (softmaxes, optimizer steps, vector
algebra) are not passes; they are part of the measured overhead.

Betty's graph (engine/build.py). For K >= 2: problems v_k, w_k, arch_k; l2u v_k -> w_j (j != k),
w_j -> arch_k (all j, k); u2l arch_k -> {w_k, v_k, w_j (j != k)} unless first_order. Betty
finds, per u2l edge, the l2u paths back to arch_k, so arch_k's hypergradient follows 2K - 1
paths (K - 1 fewer with ``pseudo_label_arch_grad=false``, only P1 with
``detach_pseudo_labels=true``):

    P1      arch_k <- w_k                   solver(w_k -> arch_k)
    P2_j    arch_k <- w_j <- v_k  (j != k)  solver(w_j -> v_k), then solver(v_k -> arch_k)
    P3_j    arch_k <- w_j         (j != k)  solver(w_j -> arch_k)  (direct pseudo-label term)

Each path starts from dL_val/dW_j (``betty.hypergradient.get_grads``: one B through learner j's
validation graph, which ``retain_graph=True`` keeps). K = 1 has w_0 and arch_0 only, path P1.

Before the engine's one-sweep hypergradient (engine/hypergradient.py), each arch_k followed
its paths one by one (K^2 validation forwards, K (3K - 2) solver calls through W stages) and
every W stage re-ran its peers' pseudo-label forwards: K = 2 darts 86 passes, neumann(1) 112,
unrolled (then exact) 84; BENCHMARKS.md keeps those figures.

Current code, per step (K >= 2 unless said otherwise):

- V stage (problems/v_stage.py), each k: 1 F (D_tr) + 1 B.                       -> K(F + B)
- W stage (problems/w_stage.py), each k: own forward on D_tr and on D_u (2 F) and 2 B; each
  V_k's pseudo-labels are computed once per step without a graph and shared (K F).
                                                                      -> 3K F + 2K B
  K = 1: no V stage; W is 1 F + 1 B (no unlabelled data).
- Architecture stage: one validation forward and backward per learner (the backward gives
  dL_j/dA_j and, for implicit types, dL_j/dW_j).                               -> K(F + B)
- Implicit types: one solver call per w_j, whose "previous problem" is every problem its
  paths continue to (A_j, the peers' A_k and V_k), on the vector dL_j/dW_j; then one solver call
  per v_k on the sum of the vectors the w_j sent it. Re-evaluating w_j's loss costs
  S_W = 2 + (K - 1) F (own D_tr and D_u, every peer's pseudo-labels with a graph; K = 1: 1);
  a gradient towards the union runs back through w_j's n_W = 2 own graphs and the K - 1 peer
  pseudo-label graphs. With i = neumann_iterations (cg: cg_iterations; unrolled_exact: 0):

  - darts and unrolled (finite differences, Eq. 9): w_j 2 (S_W F + (n_W + K - 1) B),
    v_k 2 (F + B);
  - neumann / cg: w_j S_W F + (n_W + K - 1) B + (i + 1) n_W S, v_k F + B + (i + 1) S.

  Totals, passes = F + B + 2 S: K = 1: first_order 4, darts 8, neumann/cg 8 + 2i.
  K = 2: first_order 18, darts and unrolled 50, neumann(1) 58. K = 3: 27, 87, 93.

Floor (what the same approximation needs, each quantity computed once per step):

- V: K(F + B). W: 2K F + 2K B, plus each V_k's pseudo-labels once (K F, shared by the peers).
- Architecture: K validation forwards and K backwards (one backward of L_j gives dL_j/dA_j and
  dL_j/dW_j together). K = 1: W F + B, architecture F + B.
- Implicit: one solver application per w_j, on the vector dL_j/dW_j (shared by every arch_k);
  its backward also yields the gradients with respect to the K - 1 pseudo-label targets. Then
  one backward through each V_k's pseudo-label graph (kept from the W stage) for the summed
  target gradient: it yields the V_k vector and the direct A_k term (K B). Then one solver
  application per v_k on that summed vector.
  darts: w_j 2(2F + 2B), v_k 2(F + B). neumann/cg(i): w_j 2F + 2B + (2i + 2) S,
  v_k F + B + (i + 1) S.
- Totals: K = 1: first_order 4, darts 8, neumann/cg 8 + 2i. K >= 2: first_order 9K; darts 22K;
  neumann/cg 22K + 6iK (K=2, i=1: 56; the current code: 112).
"""

from __future__ import annotations

import ctypes
import gc
import json
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

HYPERGRADS = ("first_order", "darts", "unrolled", "neumann", "cg")

PRESETS = {
    # The reference point: small enough for a CPU, the DARTS space at full width of ops.
    "default": dict(
        init_channels=8, layers=5, image_size=32, batch_size=16, num_classes=100, steps=4
    ),
    # The test's configuration: seconds on a CPU.
    "tiny": dict(
        init_channels=4,
        layers=3,
        image_size=8,
        batch_size=4,
        num_classes=10,
        steps=1,
        repeats=2,
        warmup=1,
        learners=[1, 2],
    ),
    # The paper's search network (C = 16, 8 cells, batch 64): for a GPU.
    "paper": dict(
        init_channels=16, layers=8, image_size=32, batch_size=64, num_classes=100, steps=4
    ),
}

DEFAULTS = dict(
    preset="default",
    init_channels=8,
    layers=5,
    image_size=32,
    batch_size=16,
    num_classes=100,
    steps=4,
    learners=[1, 2, 3],
    hypergrad=list(HYPERGRADS),
    neumann_iterations=1,
    cg_iterations=1,
    pseudo_label_arch_grad=True,
    detach_pseudo_labels=False,
    repeats=10,
    warmup=2,
    batches=4,
    seed=0,
    device="cpu",
    threads=0,
    channels_last=False,
    bf16=False,
)


class UsageError(ValueError):
    pass


def _coerce(key: str, text: str, default):
    try:
        if isinstance(default, bool):
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, list):
            items = [item.strip() for item in text.strip("[]").split(",") if item.strip()]
            if not items:
                raise ValueError
            return [int(item) for item in items] if isinstance(default[0], int) else items
        return text
    except ValueError:
        raise UsageError(f"{key}={text!r}: expected {type(default).__name__}") from None


def parse_args(argv: list[str]) -> dict:
    """``key=value`` / ``--key value`` / ``--key=value`` overrides on top of a preset."""
    pairs: list[tuple[str, str]] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" not in arg:
                if not args:
                    raise UsageError(f"--{arg} needs a value")
                arg = f"{arg}={args.pop(0)}"
        if "=" not in arg:
            raise UsageError(f"expected key=value, got {arg!r}")
        key, value = arg.split("=", 1)
        pairs.append((key.strip().replace("-", "_"), value))
    cfg = dict(DEFAULTS)
    for key, _ in pairs:
        if key not in DEFAULTS:
            raise UsageError(f"unknown key {key!r}; keys: {', '.join(DEFAULTS)}")
    preset = dict(pairs).get("preset", DEFAULTS["preset"])
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    cfg.update(PRESETS[preset], preset=preset)
    for key, value in pairs:
        cfg[key] = _coerce(key, value, DEFAULTS[key])
    for name in cfg["hypergrad"]:
        if name not in HYPERGRADS:
            raise UsageError(f"unknown hypergrad {name!r}; choose from {', '.join(HYPERGRADS)}")
    if any(k < 1 for k in cfg["learners"]):
        raise UsageError("learners: every K must be >= 1")
    for key in ("repeats", "batches", "init_channels", "layers", "batch_size", "steps"):
        if cfg[key] < 1:
            raise UsageError(f"{key} must be >= 1")
    if cfg["warmup"] < 0 or cfg["threads"] < 0 or cfg["neumann_iterations"] < 0:
        raise UsageError("warmup, threads and neumann_iterations must be >= 0")
    if cfg["cg_iterations"] < 1:
        raise UsageError("cg_iterations must be >= 1")
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", cfg["device"]):
        raise UsageError(f"device must be cpu, cuda, cuda:N or auto (got {cfg['device']!r})")
    return cfg


# ----------------------------------------------------------------------------- pass counts


@dataclass
class Count:
    """Forward passes, backward passes and second-order products (2 passes each)."""

    F: int = 0
    B: int = 0
    S: int = 0
    parts: dict = field(default_factory=dict)

    def add(self, part: str, F: int = 0, B: int = 0, S: int = 0) -> None:
        self.F += F
        self.B += B
        self.S += S
        self.parts[part] = self.parts.get(part, 0) + F + B + 2 * S

    @property
    def passes(self) -> int:
        return self.F + self.B + 2 * self.S


def _iterations(hypergrad: str, cfg: dict) -> int:
    return {"unrolled": 0, "neumann": cfg["neumann_iterations"], "cg": cfg["cg_iterations"]}.get(
        hypergrad, 0
    )


def _path_counts(K: int, cfg: dict) -> tuple[int, int]:
    """(number of P2 paths, number of P3 paths) per architecture."""
    if K == 1 or cfg["detach_pseudo_labels"]:
        return 0, 0
    return K - 1, (K - 1 if cfg["pseudo_label_arch_grad"] else 0)


def current_passes(K: int, hypergrad: str, cfg: dict) -> Count:
    """What the engine executes per step (see "Current code" in the module docstring)."""
    c = Count()
    if K == 1:
        c.add("w", F=1, B=1)
    else:
        c.add("v", F=K, B=K)
        c.add("w", F=3 * K, B=2 * K)  # own D_tr and D_u forwards, each V's pseudo-labels once
    c.add("arch", F=K, B=K)  # one validation forward and backward per learner
    if hypergrad == "first_order":
        return c
    n_w = 1 if K == 1 else 2
    peers = 0 if K == 1 or cfg["detach_pseudo_labels"] else K - 1
    s_w = n_w + peers
    i = _iterations(hypergrad, cfg)
    finite_difference = hypergrad in ("darts", "unrolled")
    for _ in range(K):  # one solver call per w_j, towards every problem its paths continue to
        if finite_difference:
            c.add("solver_w", F=2 * s_w, B=2 * (n_w + peers))
        else:
            c.add("solver_w", F=s_w, B=n_w + peers, S=(i + 1) * n_w)
    n_p2, _ = _path_counts(K, cfg)
    if n_p2:
        for _ in range(K):  # one solver call per v_k, on the sum of what the w_j sent it
            if finite_difference:
                c.add("solver_v", F=2, B=2)
            else:
                c.add("solver_v", F=1, B=1, S=i + 1)
    return c


def floor_passes(K: int, hypergrad: str, cfg: dict) -> Count:
    """What the algorithm needs per step with every quantity computed once."""
    c = Count()
    if K == 1:
        c.add("w", F=1, B=1)
    else:
        c.add("v", F=K, B=K)
        c.add("w", F=3 * K, B=2 * K)
    c.add("arch", F=K, B=K)
    if hypergrad == "first_order":
        return c
    n_w = 1 if K == 1 else 2
    i = _iterations(hypergrad, cfg)
    n_p2, _ = _path_counts(K, cfg)
    for _ in range(K):
        if hypergrad == "darts":
            c.add("solver_w", F=2 * n_w, B=2 * n_w)
        else:
            c.add("solver_w", F=n_w, B=n_w, S=(i + 1) * n_w)
    if n_p2:
        for _ in range(K):
            c.add("pseudo_label_backward", B=1)
            if hypergrad == "darts":
                c.add("solver_v", F=2, B=2)
            else:
                c.add("solver_v", F=1, B=1, S=i + 1)
    return c


# ----------------------------------------------------------------------------- measurement


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


LIBC = _libc()


class Memory:
    """Peak memory of a row: CUDA allocator statistics or the process's resident set."""

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
            return
        if LIBC is not None:
            LIBC.malloc_trim(0)  # give freed heap back, so the next row's growth is visible
        if self.method == "vmhwm_reset":
            self._reset_hwm()
            self.base = self._status("VmRSS")
        else:
            self.base = self._maxrss()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "vmhwm_reset":
            peak = self._status("VmHWM")
        else:
            peak = self._maxrss()
        return max(peak - self.base, 0) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, warmup: int, repeats: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def make_data(cfg: dict, device: torch.device):
    g = torch.Generator().manual_seed(cfg["seed"])
    shape = (cfg["batch_size"], 3, cfg["image_size"], cfg["image_size"])

    def labeled():
        return [
            (
                torch.randn(shape, generator=g).to(device),
                torch.randint(0, cfg["num_classes"], (cfg["batch_size"],), generator=g).to(device),
            )
            for _ in range(cfg["batches"])
        ]

    train, val = labeled(), labeled()
    unlabeled = [torch.randn(shape, generator=g).to(device) for _ in range(cfg["batches"])]
    return train, val, unlabeled


def make_net(cfg: dict):
    from sgl_betty.search_space import SearchNetwork

    return SearchNetwork(
        cfg["init_channels"],
        cfg["num_classes"],
        cfg["layers"],
        steps=cfg["steps"],
        multiplier=cfg["steps"],
    )


def make_arch(cfg: dict):
    from sgl_betty.search_space import Architecture

    return Architecture(steps=cfg["steps"], multiplier=cfg["steps"])


class ForwardCounter:
    """Counts forward calls of the given networks (a check of the derived forward count)."""

    def __init__(self, nets):
        self.count = 0
        self.handles = [net.register_forward_pre_hook(self._hook) for net in nets]

    def _hook(self, module, args):
        self.count += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def prime(cfg: dict, device: torch.device, data) -> None:
    """Load every module and run one forward and backward before any row is measured, so that
    one-time costs (imports, allocator and thread-pool set-up) fall on no row."""
    import sgl_betty.engine  # noqa: F401  (Betty and the problems)

    net, arch = make_net(cfg).to(device), make_arch(cfg).to(device)
    x, y = data[0][0]
    F.cross_entropy(net(x, arch()), y).backward()
    sync(device)
    primer = dict(cfg, init_channels=1, layers=1, steps=1)
    engine = build_engine(1, "darts", primer, device, data)[0]
    engine.step()
    sync(device)


def measure_unit(cfg: dict, device: torch.device, data, memory: Memory) -> dict:
    torch.manual_seed(cfg["seed"])
    memory.start()
    net, arch = make_net(cfg).to(device), make_arch(cfg).to(device)
    x, y = data[0][0]
    if cfg["channels_last"]:
        net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = list(net.parameters()) + list(arch.parameters())
    counter = ForwardCounter([net])

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["bf16"]):
            loss = F.cross_entropy(net(x, arch()), y)
        loss.backward()
        for p in params:
            p.grad = None

    times = timed(step, cfg["warmup"], cfg["repeats"], device)
    forwards = counter.count / (cfg["warmup"] + cfg["repeats"])
    counter.remove()
    peak = memory.peak_mb()
    return dict(times=times, forwards_observed=forwards, peak_memory_mb=peak)


def measure_engine(K: int, hypergrad: str, cfg: dict, device: torch.device, data, memory):
    torch.manual_seed(cfg["seed"])
    memory.start()
    engine, learners = build_engine(K, hypergrad, cfg, device, data)
    nets = [
        net for learner in learners for net in (learner.v_net, learner.w_net) if net is not None
    ]
    for _ in range(cfg["warmup"]):
        engine.step()
    counter = ForwardCounter(nets)
    times = timed(engine.step, 0, cfg["repeats"], device)
    forwards = counter.count / cfg["repeats"]
    counter.remove()
    peak = memory.peak_mb()
    del engine, learners, nets
    return dict(times=times, forwards_observed=forwards, peak_memory_mb=peak)


def build_engine(K: int, hypergrad: str, cfg: dict, device: torch.device, data):
    from sgl_betty import HypergradConfig, Learner, SGLConfig, build_sgl_engine

    learners = [
        Learner(make_arch(cfg), make_net(cfg) if K > 1 else None, make_net(cfg)) for _ in range(K)
    ]
    config = SGLConfig(
        hypergrad=HypergradConfig(
            type=hypergrad,
            neumann_iterations=cfg["neumann_iterations"],
            cg_iterations=cfg["cg_iterations"],
        ),
        pseudo_label_arch_grad=cfg["pseudo_label_arch_grad"],
        detach_pseudo_labels=cfg["detach_pseudo_labels"],
        autocast_dtype=torch.bfloat16 if cfg["bf16"] else None,
        channels_last=cfg["channels_last"],
    )
    train, val, unlabeled = data
    engine = build_sgl_engine(
        learners,
        train,
        val,
        unlabeled if K > 1 else None,
        config,
        train_iters=10**9,
        device=device,
    )
    return engine, learners


# ----------------------------------------------------------------------------- output


def _int_or_float(value: float):
    return int(value) if float(value).is_integer() else value


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| method | K | hypergrad | seconds_per_step | passes | passes_floor | overhead "
        "| forwards (derived / observed) | peak_memory_mb |"
    )
    lines = [header, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['K']} | {r['hypergrad']} | {r['seconds_per_step']:.4f} "
            f"| {r['passes']} | {r['passes_floor']} | {r['overhead']:.2f} "
            f"| {r['forwards']} / {r['forwards_observed']} | {r['peak_memory_mb']:.1f} |"
        )
    return "\n".join(lines)


def run(cfg: dict) -> dict:
    device_name = cfg["device"]
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda but no CUDA device is visible")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    threads = torch.get_num_threads()
    memory = Memory(device)
    data = make_data(cfg, device)
    prime(cfg, device, data)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"perf: device={device} threads={threads} memory={memory.method}")
    unit = measure_unit(cfg, device, data, memory)
    unit_fwd_bwd = statistics.median(unit["times"])
    unit_seconds = unit_fwd_bwd / 2  # per pass: the unit is one forward and one backward
    rows = [
        dict(
            method="supernet",
            K=1,
            hypergrad="none",
            seconds_per_step=unit_fwd_bwd,
            passes=2,
            overhead=1.0,
            peak_memory_mb=unit["peak_memory_mb"],
            passes_floor=2,
            forwards=1,
            forwards_observed=_int_or_float(unit["forwards_observed"]),
        )
    ]
    log(f"perf: unit (forward + backward) {unit_fwd_bwd:.4f} s")
    for K in cfg["learners"]:
        for hypergrad in cfg["hypergrad"]:
            current = current_passes(K, hypergrad, cfg)
            floor = floor_passes(K, hypergrad, cfg)
            result = measure_engine(K, hypergrad, cfg, device, data, memory)
            seconds = statistics.median(result["times"])
            rows.append(
                dict(
                    method="single" if K == 1 else "sgl",
                    K=K,
                    hypergrad=hypergrad,
                    seconds_per_step=seconds,
                    passes=current.passes,
                    overhead=seconds / (current.passes * unit_seconds),
                    peak_memory_mb=result["peak_memory_mb"],
                    passes_floor=floor.passes,
                    forwards=current.F,
                    forwards_observed=_int_or_float(result["forwards_observed"]),
                    passes_by_part=current.parts,
                )
            )
            log(
                f"perf: K={K} {hypergrad}: {seconds:.4f} s/step, {current.passes} passes "
                f"(floor {floor.passes})"
            )
    return dict(
        unit_seconds=unit_seconds,
        unit_fwd_bwd_seconds=unit_fwd_bwd,
        device=str(device),
        threads=threads,
        memory_method=memory.method,
        torch=torch.__version__,
        config={k: v for k, v in cfg.items()},
        applied_flags={"channels_last": cfg["channels_last"], "bf16": cfg["bf16"]},
        rows=rows,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        result = run(cfg)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cfg = result["config"]
    print(
        f"# SGL step cost: preset={cfg['preset']} C={cfg['init_channels']} layers={cfg['layers']} "
        f"steps={cfg['steps']} {cfg['image_size']}x{cfg['image_size']} "
        f"batch={cfg['batch_size']} classes={cfg['num_classes']} device={result['device']} "
        f"threads={result['threads']} repeats={cfg['repeats']} warmup={cfg['warmup']}"
    )
    print(
        f"# unit: supernet forward + backward {result['unit_fwd_bwd_seconds']:.4f} s, "
        f"per pass {result['unit_seconds']:.4f} s; memory: {result['memory_method']}"
    )
    if cfg["channels_last"] or cfg["bf16"]:
        print(
            f"# channels_last={cfg['channels_last']} bf16 autocast={cfg['bf16']} (unit and steps)"
        )
    print()
    print(markdown_table(result["rows"]))
    print()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
