"""One architecture search, start to finish: data, K learners, the SGL engine, the run folder.

The whole training step is ``engine.step()``; everything else here is bookkeeping.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sgl_betty.data import build_search_data
from sgl_betty.engine import build_sgl_engine
from sgl_betty.genotypes import genotype_to_dict
from sgl_betty.tracking import RunFolder

from .config import ConfigError, sgl_config, to_yaml
from .methods import build_learners


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
def validation_accuracy(net: torch.nn.Module, arch: torch.nn.Module, loader, device, max_batches=None) -> float:
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


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def run_search(cfg: DictConfig) -> dict:
    """Run the search described by ``cfg`` and return its summary (also in summary.json)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = build_data(cfg)
    steps_per_epoch = len(data.train)
    if cfg.search.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.search.steps_per_epoch)
    total_steps = cfg.search.epochs * steps_per_epoch
    learners = build_learners(cfg, data.num_classes, total_steps)
    sgl = sgl_config(cfg)
    sgl.arch_warmup_steps = cfg.search.arch_warmup_epochs * steps_per_epoch
    engine = build_sgl_engine(
        learners, data.train, data.val, data.unlabeled, sgl, train_iters=total_steps, device=device
    )

    folder = RunFolder(cfg.run.dir or default_run_dir(cfg))
    cfg.run.dir = str(folder.path)
    folder.write_text("config.yaml", to_yaml(cfg))
    quiet = not cfg.run.progress
    tqdm.write(f"run folder: {folder.path}\n" + data.describe()) if not quiet else None

    started = time.perf_counter()
    window_seconds, window_steps = 0.0, 0
    epochs = tqdm(range(cfg.search.epochs), desc="epochs", disable=quiet)
    for epoch in epochs:
        steps = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=quiet)
        for _ in steps:
            tick = time.perf_counter()
            engine.step()
            window_seconds += time.perf_counter() - tick
            window_steps += 1
            if engine.global_step % cfg.run.log_every == 0 or engine.global_step == total_steps:
                row = {"step": engine.global_step, "epoch": epoch, "seconds_per_step": window_seconds / window_steps}
                row.update(engine.metrics())
                folder.append_jsonl("metrics.jsonl", row)
                window_seconds, window_steps = 0.0, 0
                steps.set_postfix(loss=f"{row.get('learner0/w_train_loss', math.nan):.3f}")
        genotypes = [genotype_to_dict(learner.arch.genotype()) for learner in learners]
        folder.append_jsonl("genotypes.jsonl", {"epoch": epoch, "step": engine.global_step, "genotypes": genotypes})
    wall_seconds = time.perf_counter() - started

    val_acc = [
        validation_accuracy(learner.w_net, learner.arch, data.val, device, cfg.search.val_batches)
        for learner in learners
    ]
    folder.save_torch("architecture.pt", {k: learner.arch.state_dict() for k, learner in enumerate(learners)})
    hours = wall_seconds / 3600
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
        "gpu_hours" if device.type == "cuda" else "cpu_hours": hours,
    }
    folder.write_json("summary.json", summary)
    if not quiet:
        print_summary(summary, folder.path)
    return summary


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
        print(f"  learner {k}: search val acc {100 * acc:.2f}%\n    normal: {normal}\n    reduce: {reduce}")
    print(f"run folder: {path}")
