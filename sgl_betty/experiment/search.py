"""One architecture search, start to finish: data, K learners, the SGL engine, the run folder.

The whole training step is ``engine.step()``; everything else here is bookkeeping.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import platform
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from sgl_betty.data import build_search_data
from sgl_betty.engine import build_sgl_engine
from sgl_betty.evaluation.distributed import init_distributed
from sgl_betty.genotypes import genotype_to_dict
from sgl_betty.tracking import RunFolder, build_tracker

from .config import ConfigError, sgl_config, to_yaml
from .methods import build_learners, search_method


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_run_dir(cfg: DictConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.search.method}-{cfg.hypergrad.type}-k{cfg.learners}"


def build_data(cfg: DictConfig):
    data = cfg.data
    synthetic = dict(OmegaConf.to_container(data.synthetic))
    if data.image_size is not None:
        synthetic["image_size"] = data.image_size
    return build_search_data(
        data.dataset,
        data.unlabeled,
        root=data.root,
        download=data.download,
        batch_size=cfg.search.batch_size,
        train_portion=data.train_portion,
        num_workers=data.num_workers,
        seed=cfg.seed,
        image_size=data.image_size,
        synthetic=synthetic,
        limit=data.limit,
    )


@torch.no_grad()
def validation_accuracy(
    net: torch.nn.Module, arch: torch.nn.Module, loader, device, max_batches=None
) -> float:
    """Top-1 accuracy of a search network on D_val, in eval mode as DARTS's ``infer``."""
    was_training = net.training
    net.eval()
    correct = total = 0
    weights = arch()
    for index, (x, y) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        correct += (net(x, weights).argmax(-1) == y).sum().item()
        total += y.numel()
    net.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def softmaxed_weights(arch: torch.nn.Module) -> dict[str, list]:
    """Every architecture parameter, softmaxed over candidate ops, as nested lists
    (or the method's own normalisation where it has one, e.g. PC-DARTS's per-node betas)."""
    if hasattr(arch, "normalized_weights"):
        return {
            name: w.detach().float().cpu().tolist() for name, w in arch.normalized_weights().items()
        }
    return {
        name: torch.softmax(p.detach().float(), dim=-1).cpu().tolist()
        for name, p in arch.named_parameters()
    }


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


CHECKPOINT = "checkpoint.pt"
LINE_FILES = ("metrics.jsonl", "genotypes.jsonl")


class SearchInterrupted(Exception):
    """SIGINT/SIGTERM stopped the search after a checkpoint; the message says how to resume."""


class StopRequests:
    """Turns SIGINT and SIGTERM into a request honoured between two steps, so that the state
    written to the checkpoint is always that of a whole step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # a second Ctrl-C: stop now, the last checkpoint stands
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def shard_loader(loader: DataLoader, rank: int, world_size: int, seed: int) -> DataLoader:
    """The same data, each process taking its own part of every epoch's shuffle."""
    sampler = DistributedSampler(
        loader.dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        drop_last=True,
        pin_memory=loader.pin_memory,
    )


def arch_checksum(arch: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(arch.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_search(cfg: DictConfig, resume: bool = False) -> dict:
    """Run the search described by ``cfg`` and return its summary (also in summary.json).

    With ``resume``, continue the run in ``cfg.run.dir`` from its last checkpoint. Under
    torchrun every process runs the search on its shard of the data; rank 0 writes the folder.
    """
    device = resolve_device(cfg.device)
    context = init_distributed(device)
    device = context.device
    seed_everything(cfg.seed)
    data = build_data(cfg)
    train, val, unlabeled = data.train, data.val, data.unlabeled
    if context.enabled:
        train, val, unlabeled = (
            shard_loader(loader, context.rank, context.world_size, cfg.seed + index)
            for index, loader in enumerate((train, val, unlabeled))
        )
    steps_per_epoch = len(train)
    if cfg.search.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.search.steps_per_epoch)
    total_steps = cfg.search.epochs * steps_per_epoch
    method = search_method(cfg.search.method)
    learners = build_learners(cfg, data.num_classes, total_steps)
    if context.enabled:  # same initial weights everywhere (broadcast anyway), own augmentations
        seed_everything(cfg.seed + 1000 * context.rank)
    sgl = sgl_config(cfg)
    sgl.arch_warmup_steps = cfg.search.arch_warmup_epochs * steps_per_epoch
    engine = build_sgl_engine(
        learners, train, val, unlabeled, sgl, train_iters=total_steps, device=device
    )

    if cfg.run.dir is None:
        cfg.run.dir = str(default_run_dir(cfg))
    folder = RunFolder(cfg.run.dir, enabled=context.is_main)
    elapsed = 0.0
    if resume:
        elapsed = restore_checkpoint(folder, engine, context)
    else:
        folder.write_text("config.yaml", to_yaml(cfg))
    tracker = build_tracker(cfg, folder)
    tracker.start(OmegaConf.to_container(cfg, resolve=True), kind="search")
    quiet = not cfg.run.progress or not context.is_main
    if not quiet:
        tqdm.write(f"run folder: {folder.path}\n" + data.describe())

    def checkpoint() -> None:
        save_checkpoint(folder, engine, context, elapsed + time.perf_counter() - started)

    started = time.perf_counter()
    window_seconds, window_steps = 0.0, 0
    progress = tqdm(total=total_steps, initial=engine.global_step, desc="search", disable=quiet)
    with StopRequests() as stop:
        while engine.global_step < total_steps:
            epoch = engine.global_step // steps_per_epoch
            tick = time.perf_counter()
            if method.on_step is not None:
                method.on_step(learners, engine.global_step / total_steps)
            engine.step()
            window_seconds += time.perf_counter() - tick
            window_steps += 1
            progress.update(1)
            step = engine.global_step
            if step % cfg.run.log_every == 0 or step == total_steps:
                row = {
                    "step": step,
                    "epoch": epoch,
                    "seconds_per_step": window_seconds / window_steps,
                }
                row.update(engine.metrics())
                folder.append_jsonl("metrics.jsonl", row)
                tracker.log_metrics(row, step)
                window_seconds, window_steps = 0.0, 0
                progress.set_postfix(
                    epoch=epoch, loss=f"{row.get('learner0/w_train_loss', math.nan):.3f}"
                )
            if step % steps_per_epoch == 0:
                record_architectures(folder, tracker, learners, epoch, step)
                checkpoint()
            elif cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
                checkpoint()
            if stop.received is not None and step < total_steps:
                if step % steps_per_epoch and not (
                    cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0
                ):
                    checkpoint()
                progress.close()
                raise SearchInterrupted(
                    f"search stopped by signal {stop.received} after step {step} of {total_steps}; "
                    f"resume with: --resume {folder.path}"
                )
    progress.close()
    wall_seconds = elapsed + time.perf_counter() - started

    val_acc = [
        validation_accuracy(learner.w_net, learner.arch, val, device, cfg.search.val_batches)
        for learner in learners
    ]
    if context.enabled:
        val_acc = [acc / context.world_size for acc in context.all_reduce_sum(val_acc)]
    folder.save_torch(
        "architecture.pt", {k: learner.arch.state_dict() for k, learner in enumerate(learners)}
    )
    checksums = context.gather([arch_checksum(learner.arch) for learner in learners])
    summary = {
        "method": cfg.search.method,
        "hypergrad": cfg.hypergrad.type,
        "learners": cfg.learners,
        "lam": cfg.lam,
        "seed": cfg.seed,
        "dataset": cfg.data.dataset,
        "genotypes": [genotype_to_dict(learner.arch.genotype()) for learner in learners],
        "val_acc": val_acc,
        "steps": total_steps,
        "wall_seconds": wall_seconds,
        "seconds_per_step": wall_seconds / max(total_steps, 1),
        "device": str(device),
        "machine": machine_description(device),
        "processes": context.world_size,
        "arch_checksums": checksums,
        "gpu_hours" if device.type == "cuda" else "cpu_hours": wall_seconds
        * context.world_size
        / 3600,
    }
    folder.write_json("summary.json", summary)
    tracker.finish(summary)
    if not quiet:
        print_summary(summary, folder.path)
    return summary


def record_architectures(folder, tracker, learners, epoch: int, step: int) -> None:
    genotypes = [genotype_to_dict(learner.arch.genotype()) for learner in learners]
    weights = [softmaxed_weights(learner.arch) for learner in learners]
    folder.append_jsonl(
        "genotypes.jsonl",
        {"epoch": epoch, "step": step, "genotypes": genotypes, "weights": weights},
    )
    tracker.log_architecture(epoch, genotypes, weights)


def save_checkpoint(folder: RunFolder, engine, context, elapsed: float) -> None:
    """Atomically replace the checkpoint (rank 0 writes; every rank's RNG state is in it)."""
    rng = context.gather(rng_state())
    line_files = {}
    for name in LINE_FILES:
        path = folder.file(name)
        line_files[name] = path.stat().st_size if path.exists() else 0
    folder.save_torch(
        CHECKPOINT,
        {
            "engine": engine.state_dict(),
            "rng": rng,
            "line_files": line_files,
            "elapsed_seconds": elapsed,
        },
    )


def restore_checkpoint(folder: RunFolder, engine, context) -> float:
    """Load the last checkpoint into ``engine``; returns the search seconds spent before it."""
    path = folder.file(CHECKPOINT)
    if not path.is_file():
        raise ConfigError(
            f"cannot resume: {path} does not exist (the run stopped before its first checkpoint); "
            "start it again without --resume"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    engine.load_state_dict(state["engine"])
    # Lines written after the checkpoint describe steps that will be run again.
    if context.is_main:
        for name, size in state["line_files"].items():
            file = folder.file(name)
            if file.exists():
                with open(file, "r+b") as handle:
                    handle.truncate(size)
    # After the data position was replayed: replaying it draws augmentations from the RNG.
    set_rng_state(state["rng"][context.rank])
    return state["elapsed_seconds"]


def print_summary(summary: dict, path: Path) -> None:
    cost_key = "gpu_hours" if "gpu_hours" in summary else "cpu_hours"
    print(
        f"\nsearch finished: {summary['method']} with SGL K={summary['learners']}, "
        f"hypergrad={summary['hypergrad']}, {summary['steps']} steps in {summary['wall_seconds']:.1f} s "
        f"({summary[cost_key]:.4f} {cost_key.replace('_', '-')} on {summary['machine']})"
    )
    for k, (acc, genotype) in enumerate(zip(summary["val_acc"], summary["genotypes"])):
        normal = ", ".join(f"{op}<-{src}" for op, src in genotype["normal"])
        reduce = ", ".join(f"{op}<-{src}" for op, src in genotype["reduce"])
        print(
            f"  learner {k}: search val acc {100 * acc:.2f}%\n    normal: {normal}\n    reduce: {reduce}"
        )
    print(f"run folder: {path}")
