"""Evaluation under torchrun: two CPU processes (gloo) train one network with DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port

from sgl_betty.evaluation import load_trained_network, weights_checksum
from sgl_betty.tracking import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_end_with_identical_weights_and_one_run_folder(tmp_path):
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(ROOT / "benchmarks" / "cifar100.py"),
        "--stage",
        "eval",
        "preset=tiny",
        "device=cpu",
        "eval.genotype=DARTS_V2",
        # Two steps of 4 images per process; drop path makes the ranks' forward passes differ.
        "eval.drop_path_prob=0.3",
        "eval.epochs=2",
        f"run.dir={run}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["global_batch_size"] == 8 and summary["per_rank_batch_size"] == 4
    checksums = summary["weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    network, _ = load_trained_network(run / "model.pt")
    assert weights_checksum(network) == checksums[0]
    # Each rank tested half of the 16 test images; together they count each once.
    assert summary["test_images"] == 16
    assert summary["cpu_hours"] * 3600 == pytest.approx(2 * summary["wall_seconds"])

    # Written once, by rank 0: one row per epoch, one summary line on screen.
    assert [row["epoch"] for row in read_jsonl(run / "metrics.jsonl")] == [0, 1]
    assert {p.name for p in run.iterdir()} == {
        "run.json",
        "config.yaml",
        "metrics.jsonl",
        "model.pt",
        "summary.json",
    }
    assert done.stdout.count("evaluation finished") == 1
