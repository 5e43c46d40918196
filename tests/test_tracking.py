"""Tracking: a tiny search logged to W&B offline (read back from W&B's own run file), the
pictures in the run folder, and which tracker each config gets."""

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import wandb
from omegaconf import OmegaConf
from wandb.proto import wandb_internal_pb2

from sgl_betty.experiment.config import load_config
from sgl_betty.genotypes import PUBLISHED, genotype_to_dict
from sgl_betty.tracking import (
    FigureTracker,
    RunFolder,
    Tracker,
    WandbTracker,
    build_tracker,
    draw_cell,
    draw_run_figures,
    draw_weight_heatmaps,
    read_jsonl,
)
from sgl_betty.tracking.figures import CELL_FIGSIZE, CURVES_FIGSIZE, FIGURE_DPI, WEIGHTS_FIGSIZE

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixels(size_inches):
    width, height = size_inches
    return round(height * FIGURE_DPI), round(width * FIGURE_DPI)


def read_wandb_records(path):
    """The records of a W&B run file (``run-<id>.wandb``) as wandb's own protobuf ``Record``s.

    wandb 0.31 ships no Python reader, so the framing is read here: a 7-byte header
    (":W&B", 0xBEE1, version 0), then 32 KiB blocks of chunks, each chunk a 7-byte header
    (CRC-32 of type byte + payload, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:
            position += left_in_block
            continue
        checksum, length, chunk_type = struct.unpack("<IHB", data[position : position + 7])
        if chunk_type == 0 and length == 0:  # zero padding to the end of the block
            position += left_in_block
            continue
        payload = data[position + 7 : position + 7 + length]
        assert zlib.crc32(bytes([chunk_type]) + payload) == checksum, "corrupt W&B record"
        position += 7 + length
        pending += payload
        if chunk_type in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def records_of(records, kind):
    return [record for record in records if record.WhichOneof("record_type") == kind]


def history_rows(records):
    rows = []
    for record in records_of(records, "history"):
        rows.append(
            {"/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        )
    return rows


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """A tiny search from the command line with W&B offline, as a user without a W&B account
    runs it: no credentials, no network (the W&B host is a closed local port), no terminal."""
    base = tmp_path_factory.mktemp("tracking")
    run_dir = base / "tiny-wandb"
    home = base / "home"
    home.mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    environment.update(
        HOME=str(home),
        NETRC=str(home / "no-netrc"),
        WANDB_BASE_URL="http://127.0.0.1:9",
        OMP_NUM_THREADS="1",
    )
    overrides = [
        "preset=tiny",
        "device=cpu",
        "seed=5",
        "hypergrad.type=first_order",
        "tracking.wandb=true",
        "tracking.mode=offline",
        "tracking.figures=true",
        "tracking.group=tests",
        "tracking.tags=[tiny,offline]",
        "run.progress=true",
        f"run.dir={run_dir}",
    ]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cifar100.py"), *overrides],
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=base,
    )
    assert result.returncode == 0, result.stderr
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return {
        "dir": run_dir,
        "result": result,
        "records": read_wandb_records(wandb_file),
        "wandb_file": wandb_file,
    }


@pytest.mark.slow
def test_offline_run_lives_in_the_run_folder_and_prints_no_wandb_noise(wandb_run):
    result, run_dir = wandb_run["result"], wandb_run["dir"]
    offline_dir = wandb_run["wandb_file"].parent
    assert offline_dir.parent == run_dir / "wandb"
    # The table's artifact file is staged inside the run folder too, so `wandb sync` finds it.
    assert list((run_dir / "wandb" / "data" / "artifacts" / "staging").iterdir())
    assert f"wandb sync {offline_dir}" in result.stdout
    assert "wandb:" not in result.stdout + result.stderr
    assert "W&B did not start" not in result.stderr


@pytest.mark.slow
def test_wandb_run_config_is_the_resolved_run_config(wandb_run):
    (run_record,) = [record.run for record in records_of(wandb_run["records"], "run")]
    assert run_record.display_name == "tiny-wandb"
    assert run_record.run_group == "tests"
    assert list(run_record.tags) == ["tiny", "offline"]
    assert run_record.job_type == "search"
    assert run_record.project == "sgl-betty"

    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    config.pop("_wandb", None)
    assert config["hypergrad"]["type"] == "first_order"
    assert config["learners"] == 2 and config["lam"] == pytest.approx(0.1) and config["seed"] == 5
    assert config["search"]["method"] == "darts"
    # The first-order search runs its architecture gradient in the descent's precision.
    assert config.pop("precision_policy")["hypergradient"].startswith("as the descent")
    saved = OmegaConf.to_container(OmegaConf.load(wandb_run["dir"] / "config.yaml"))
    assert config == json.loads(json.dumps(saved))


@pytest.mark.slow
def test_wandb_history_holds_every_logged_metric_per_learner(wandb_run):
    rows = history_rows(wandb_run["records"])
    metrics = read_jsonl(wandb_run["dir"] / "metrics.jsonl")
    assert [row["_step"] for row in rows] == [row["step"] for row in metrics] == [1, 2]
    for logged, written in zip(rows, metrics, strict=True):
        for key in (
            "learner0/w_train_loss",
            "learner1/arch_val_acc",
            "learner0/arch_hypergrad_norm",
            "learner1/v_lr",
        ):
            assert logged[key] == pytest.approx(written[key], rel=1e-6)

    final = rows[-1]
    assert final["genotypes/_type"] == "table-file"
    figure_keys = {key.split("/")[1] for key in final if key.startswith("figures/")}
    assert figure_keys == {path.stem for path in (wandb_run["dir"] / "figures").glob("*.png")}
    assert final["figures/cell_learner0_normal/_type"] == "image-file"
    assert final["figures/cell_learner0_normal/width"] == pixels(CELL_FIGSIZE)[1]


@pytest.mark.slow
def test_wandb_summary_and_genotype_table_match_the_run_folder(wandb_run):
    run_dir = wandb_run["dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    recorded = {}
    for record in records_of(wandb_run["records"], "summary"):
        for item in record.summary.update:
            recorded["/".join(item.nested_key) if item.nested_key else item.key] = json.loads(
                item.value_json
            )
    assert recorded["val_acc_max"] == pytest.approx(max(summary["val_acc"]))
    assert recorded["val_acc/1"] == pytest.approx(summary["val_acc"][1])
    assert recorded["cpu_hours"] == pytest.approx(summary["cpu_hours"])
    # Whole-run seconds per step, kept apart from the last logged step's value.
    assert recorded["run/seconds_per_step"] == pytest.approx(summary["seconds_per_step"])
    assert recorded["hypergrad"] == "first_order"

    (table_file,) = (wandb_run["wandb_file"].parent / "files" / "media" / "table").glob(
        "genotypes_*.table.json"
    )
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["epoch", "step", "learner", "normal", "reduce", "genotype"]
    (architecture,) = read_jsonl(run_dir / "genotypes.jsonl")
    assert [row[:3] for row in table["data"]] == [[0, 2, 0], [0, 2, 1]]
    for row, genotype in zip(table["data"], architecture["genotypes"], strict=True):
        (op, source), _ = genotype["normal"][:2]
        assert row[3].startswith(f"0: {op}(c_{{k-{2 - source}}})")
        assert row[5] == (
            f"Genotype(normal={[tuple(edge) for edge in genotype['normal']]}, normal_concat={genotype['normal_concat']}, "
            f"reduce={[tuple(edge) for edge in genotype['reduce']]}, reduce_concat={genotype['reduce_concat']})"
        )


def expected_figures():
    names = {}
    for learner in (0, 1):
        for cell in ("normal", "reduce"):
            names[f"cell_learner{learner}_{cell}.png"] = CELL_FIGSIZE
            names[f"weights_learner{learner}_alpha_{cell}.png"] = WEIGHTS_FIGSIZE
        names[f"curves_learner{learner}.png"] = CURVES_FIGSIZE
    return names


def assert_picture(path, size_inches):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == pixels(size_inches)
    # Not blank: a white canvas has zero variance; drawn cells, heatmaps and curves do not.
    assert image[..., :3].std() > 0.02


@pytest.mark.slow
def test_pictures_are_written_into_the_run_folder(wandb_run):
    folder = wandb_run["dir"] / "figures"
    assert {path.name for path in folder.glob("*.png")} == set(expected_figures())
    for name, size in expected_figures().items():
        assert_picture(folder / name, size)
    # Each learner's cell is its own picture.
    normal = [matplotlib.image.imread(folder / f"cell_learner{k}_normal.png") for k in (0, 1)]
    assert not np.array_equal(*normal)


@pytest.mark.slow
def test_pictures_can_be_drawn_again_from_the_run_folder(wandb_run, tmp_path):
    written = draw_run_figures(wandb_run["dir"], out_dir=tmp_path)
    assert {path.name for path in written} == set(expected_figures())
    for path in written:
        again = matplotlib.image.imread(path)
        original = matplotlib.image.imread(wandb_run["dir"] / "figures" / path.name)
        np.testing.assert_array_equal(again, original)


def test_cells_of_a_published_genotype_and_weights_of_pc_darts_shapes(tmp_path):
    genotype = genotype_to_dict(PUBLISHED["DARTS_V2"])
    normal = draw_cell(
        genotype["normal"], genotype["normal_concat"], tmp_path / "normal.png", "DARTS_V2"
    )
    reduce = draw_cell(
        genotype["reduce"], genotype["reduce_concat"], tmp_path / "reduce.png", "DARTS_V2"
    )
    assert_picture(normal, CELL_FIGSIZE)
    assert not np.array_equal(matplotlib.image.imread(normal), matplotlib.image.imread(reduce))

    # PC-DARTS's edge weights are one vector per cell type: edges against epochs.
    epochs = torch.softmax(torch.randn(3, 14), dim=-1).tolist()
    assert_picture(
        draw_weight_heatmaps(epochs, tmp_path / "betas.png", epochs=[0, 1, 2]), WEIGHTS_FIGSIZE
    )
    with pytest.raises(ValueError, match="two edges per node"):
        draw_cell(genotype["normal"][:3], [2], tmp_path / "odd.png")


def tiny_config(tmp_path, *overrides):
    return load_config(["preset=tiny", f"run.dir={tmp_path}", *overrides])


@pytest.mark.parametrize(
    ("overrides", "tracker_type"),
    [
        ((), Tracker),  # the tiny preset turns pictures off
        (("tracking.figures=true",), FigureTracker),
        (("tracking.wandb=true", "tracking.mode=disabled", "tracking.figures=true"), FigureTracker),
        (("tracking.wandb=true", "tracking.mode=offline"), WandbTracker),
    ],
)
def test_build_tracker_follows_the_tracking_config(tmp_path, overrides, tracker_type):
    tracker = build_tracker(tiny_config(tmp_path, *overrides), RunFolder(tmp_path))
    assert type(tracker) is tracker_type
    # Processes that do not write the run folder track nothing.
    assert (
        type(build_tracker(tiny_config(tmp_path, *overrides), RunFolder(tmp_path, enabled=False)))
        is Tracker
    )


def test_disabled_wandb_writes_no_wandb_files(tmp_path):
    cfg = tiny_config(
        tmp_path, "tracking.wandb=true", "tracking.mode=disabled", "tracking.figures=false"
    )
    tracker = build_tracker(cfg, RunFolder(tmp_path))
    tracker.start(OmegaConf.to_container(cfg), kind="search")
    tracker.log_metrics({"step": 1, "learner0/w_train_loss": 2.0}, step=1)
    tracker.finish({"val_acc": [0.5]})
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "figures").exists()


@pytest.mark.slow
def test_online_mode_without_an_account_falls_back_to_offline(tmp_path, monkeypatch):
    """An evaluation run: its genotype goes to the table and its test error to the summary."""
    for key in list(os.environ):
        if key.startswith("WANDB_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    run_dir = tmp_path / "runs" / "x" / "eval-learner1"
    tracker = WandbTracker(run_dir, mode="online", figures=False, announce=False)
    with pytest.warns(RuntimeWarning, match="no W&B credentials"):
        tracker.start({"eval": {"epochs": 1}, "seed": 3}, kind="eval")
    tracker.log_metrics({"epoch": 0, "train_loss": 2.25, "test_acc": 0.125}, step=0)
    genotype = genotype_to_dict(PUBLISHED["DARTS_V2"])
    tracker.finish(
        {"kind": "eval", "genotype": genotype, "learner": 1, "test_error": 87.5, "params_m": 0.25}
    )
    assert "WANDB_DATA_DIR" not in os.environ  # the tracker leaves the environment as it found it
    # run.finish() returns before W&B's core process has flushed the offline run file; the end
    # of a recipe's process waits for it, here teardown does.
    wandb.teardown()

    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(wandb_file)
    (run_record,) = [record.run for record in records_of(records, "run")]
    assert run_record.display_name == "x/eval-learner1" and run_record.job_type == "eval"
    rows = history_rows(records)
    assert rows[0]["train_loss"] == 2.25 and rows[0]["_step"] == 0
    summary = {}
    for record in records_of(records, "summary"):
        summary.update(
            {
                "/".join(item.nested_key) or item.key: json.loads(item.value_json)
                for item in record.summary.update
            }
        )
    assert summary["test_error"] == 87.5 and summary["params_m"] == 0.25
    (table_file,) = wandb_file.parent.glob("files/media/table/genotypes_*.table.json")
    (row,) = json.loads(table_file.read_text())["data"]
    assert row[2] == 1 and row[3].startswith("0: sep_conv_3x3(c_{k-2}) + sep_conv_3x3(c_{k-1})")
