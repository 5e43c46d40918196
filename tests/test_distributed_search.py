"""A search under torchrun with 2 CPU processes (gloo): every rank ends with the same architectures,
and the configured batch is the batch of both together."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_share_the_batch_keep_identical_architectures_and_write_once(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(ROOT / "benchmarks" / "cifar100.py"),
        "preset=tiny",
        "hypergrad.type=unrolled",
        # Full passes over D_tr's 32 images: 4 steps of 8 images, 4 per process.
        "search.steps_per_epoch=null",
        "device=cpu",
        f"run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["global_batch_size"] == 8 and summary["per_rank_batch_size"] == 4
    # The steps of one process with the same batch: each process took half of every batch.
    assert summary["steps"] == 32 // 8
    rank0, rank1 = summary["arch_checksums"]
    assert rank0 == rank1  # the architectures did not drift apart
    assert len(set(rank0)) == 2  # two learners, two different architectures
    assert len((run_dir / "genotypes.jsonl").read_text().splitlines()) == 1  # written once
    architectures = torch.load(run_dir / "architecture.pt", weights_only=True)
    assert set(architectures) == {0, 1}
