"""The search's loaders: one global batch shared among the processes, pinned for a GPU, and a
process's shard loaded with the same settings as the loader it was made from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sgl_betty.experiment import search
from sgl_betty.experiment.config import ConfigError, batch_per_process, load_config
from sgl_betty.runtime import DistributedContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recipe import main  # noqa: E402


def test_a_process_shard_keeps_workers_pinning_and_prefetching():
    dataset = TensorDataset(torch.randn(16, 3), torch.arange(16))
    loader = DataLoader(
        dataset,
        batch_size=4,
        num_workers=1,
        persistent_workers=True,
        pin_memory=True,
        prefetch_factor=4,
    )
    shard = search.shard_loader(loader, rank=1, world_size=2, seed=0)
    assert (shard.num_workers, shard.persistent_workers, shard.pin_memory) == (1, True, True)
    assert shard.prefetch_factor == 4 and shard.batch_size == 4
    assert shard.sampler.rank == 1 and shard.sampler.num_replicas == 2
    # Without workers there is nothing to prefetch or keep (DataLoader refuses the settings).
    plain = search.shard_loader(DataLoader(dataset, batch_size=4), rank=0, world_size=2, seed=0)
    assert plain.prefetch_factor is None and not plain.persistent_workers


def test_search_loaders_are_pinned_for_a_gpu_only():
    cfg = load_config(["preset=tiny"])
    on_gpu = search.build_data(cfg, 4, torch.device("cuda"))
    on_cpu = search.build_data(cfg, 4, torch.device("cpu"))
    for loader in (on_gpu.train, on_gpu.val, on_gpu.unlabeled):
        assert loader.pin_memory and loader.batch_size == 4
    assert not any(loader.pin_memory for loader in (on_cpu.train, on_cpu.val, on_cpu.unlabeled))


def test_the_configured_batch_is_divided_among_the_processes():
    assert batch_per_process("search.batch_size", 64, 1) == 64
    assert batch_per_process("search.batch_size", 64, 4) == 16
    with pytest.raises(ConfigError, match=r"search.batch_size=64 .* 3 processes .* multiple of 3"):
        batch_per_process("search.batch_size", 64, 3)


def test_a_batch_the_processes_cannot_share_stops_the_search_before_it_starts(
    monkeypatch, tmp_path, capsys
):
    three = DistributedContext(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    monkeypatch.setattr(search, "init_distributed", lambda device: three)
    code = main("cifar100", ["preset=tiny", "search.batch_size=8", f"run.dir={tmp_path}"])
    error = capsys.readouterr().err
    assert code == 2
    assert "search.batch_size=8 is the batch over all 3 processes" in error
    assert "use a multiple of 3" in error and "Traceback" not in error
    assert not any(tmp_path.iterdir())  # nothing written
