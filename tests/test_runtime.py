"""Which GPU a process takes, the suite's CPU-only setting, and the deterministic switch."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from sgl_betty import runtime
from sgl_betty.experiment import evaluate, search
from sgl_betty.experiment.config import load_config
from sgl_betty.experiment.pipeline import search_and_evaluate_stage
from sgl_betty.runtime import (
    CUBLAS_DETERMINISTIC_WORKSPACE,
    configure_backends,
    cuda_device_index,
    process_device,
    resolve_device,
)


@pytest.mark.parametrize(
    ("environ", "visible", "index"),
    [
        ({"LOCAL_RANK": "3"}, 4, 3),  # torchrun, every GPU of the node visible
        ({"LOCAL_RANK": "3"}, 1, 0),  # one GPU per process (per-process CUDA_VISIBLE_DEVICES)
        ({"LOCAL_RANK": "5"}, 2, 1),  # two GPUs per process: the process's second one
        ({"SLURM_LOCALID": "2"}, 4, 2),  # srun without torchrun
        ({"SLURM_LOCALID": "2"}, 1, 0),  # srun --gpus-per-task=1
        ({"LOCAL_RANK": "1", "SLURM_LOCALID": "7"}, 8, 1),  # torchrun inside a SLURM job
        ({}, 4, 0),  # one process
    ],
)
def test_the_gpu_index_follows_the_position_on_the_node_and_the_visible_gpus(
    environ, visible, index
):
    assert cuda_device_index(environ, device_count=visible) == index


def test_no_visible_gpu_and_a_malformed_rank_are_clear_errors():
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES"):
        cuda_device_index({"LOCAL_RANK": "0"}, device_count=0)
    with pytest.raises(RuntimeError, match="LOCAL_RANK"):
        cuda_device_index({"LOCAL_RANK": "zero"}, device_count=2)


@pytest.fixture
def one_visible_gpu(monkeypatch):
    """CUDA as a process with its own CUDA_VISIBLE_DEVICES sees it: one GPU, index 0."""
    current = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_torchrun_with_one_gpu_per_process_takes_gpu_0(monkeypatch, one_visible_gpu):
    # LOCAL_RANK as the index gave cuda:1, a GPU this process cannot see.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: True)
    context = runtime.init_distributed(torch.device("cuda"))
    assert context.device == torch.device("cuda", 0)
    assert one_visible_gpu == [torch.device("cuda", 0)]
    assert (context.rank, context.world_size, context.local_rank) == (1, 2, 1)


def test_process_device_keeps_an_explicit_gpu_and_the_cpu(one_visible_gpu):
    assert process_device("cuda:0") == torch.device("cuda", 0)
    assert process_device(torch.device("cpu")) == torch.device("cpu")
    assert one_visible_gpu == [torch.device("cuda", 0)]  # the CPU sets no current GPU


def test_the_suite_runs_on_the_cpu_where_a_gpu_is_visible():
    # conftest hides every GPU, from this process and from the torchrun/recipe processes the
    # tests start, so device=auto (every preset's default) is the CPU.
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available()
    cfg = load_config(["preset=tiny"])
    assert cfg.device == "auto"
    assert resolve_device(cfg.device) == torch.device("cpu")


@pytest.fixture
def restore_backends(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


def test_deterministic_sets_every_flag_and_turns_benchmarking_off(restore_backends):
    configure_backends(torch.device("cuda"), deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC_WORKSPACE

    configure_backends(torch.device("cuda"), deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.benchmark  # the fast default on a GPU
    configure_backends(torch.device("cpu"), deterministic=False)
    assert not torch.backends.cudnn.benchmark


def test_deterministic_keeps_a_workspace_the_user_chose(restore_backends, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    configure_backends(torch.device("cpu"), deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.slow
def test_the_recipes_deterministic_switches_reach_search_and_evaluation(
    restore_backends, monkeypatch, tmp_path
):
    calls = []

    def recorded(device, deterministic):
        calls.append((device.type, deterministic))
        configure_backends(device, deterministic)

    monkeypatch.setattr(search, "configure_backends", recorded)
    monkeypatch.setattr(evaluate, "configure_backends", recorded)
    cfg = load_config(
        [
            "preset=tiny",
            "hypergrad.type=first_order",
            "search.deterministic=true",
            "eval.deterministic=true",
            f"run.dir={tmp_path}",
        ]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search_and_evaluate_stage(cfg)
    assert calls == [("cpu", True), ("cpu", True)]
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    # Every op of the search and the evaluation has a deterministic CPU kernel.
    assert not [w for w in caught if "deterministic" in str(w.message)]
    assert (tmp_path / "summary.json").is_file()
