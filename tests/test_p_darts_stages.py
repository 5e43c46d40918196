"""P-DARTS's progressive search through run_search: a tiny K = 2 search goes through all three
stages (3, 4, 5 cells; 8, 5, 3 ops per edge), drops the weakest ops between stages, limits the
final normal cell's skip-connects, and resumes bit for bit after a SIGTERM mid-stage or at a
stage boundary."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from sgl_betty.experiment import methods
from sgl_betty.experiment.config import load_config, load_run_config
from sgl_betty.experiment.methods import SEARCH_METHODS, SearchMethod, set_search_progress
from sgl_betty.experiment.search import CHECKPOINT, SearchInterrupted, run_search
from sgl_betty.genotypes import PRIMITIVES, genotype_from_dict, num_edges, validate_genotype
from sgl_betty.search_space import limit_skip_connects
from sgl_betty.tracking.run_folder import read_jsonl

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CELLS = [3, 4, 5]
OPS_PER_EDGE = [8, 5, 3]
OPS_KEPT = [5, 3, 1]
MAX_SKIPS = 1
STEPS = 2  # nodes per cell in the tiny preset
STEPS_PER_STAGE = 2


def p_darts_config(run_dir: Path):
    return load_config(
        [
            "preset=tiny",
            "search.method=p_darts",
            "hypergrad.type=first_order",
            "search.pdarts_add_layers=[0,1,2]",
            f"search.pdarts_ops_kept={OPS_KEPT}".replace(" ", ""),
            f"search.pdarts_max_skip_connects={MAX_SKIPS}",
            # Checkpoints at epoch ends only, so a stop mid-epoch writes its own.
            "checkpoint.every_steps=0",
            f"run.dir={run_dir}",
        ],
        recipe="cifar100",
        config_dir=CONFIG_DIR,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("p_darts")
    summary = run_search(p_darts_config(run_dir))
    return run_dir, summary


def load_architectures(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def weakest_ops(alpha: torch.Tensor, per_edge: list[list[str]], keep: int) -> list[list[str]]:
    """Independently of the library: per edge the ops with the lowest softmax weight, weakest
    first, the earlier op first among equal weights."""
    weights = torch.softmax(alpha.double(), dim=-1).tolist()
    dropped = []
    for ops, row in zip(per_edge, weights, strict=True):
        order = sorted(range(len(ops)), key=lambda k: (row[k], k))
        dropped.append([ops[k] for k in order[: len(ops) - keep]])
    return dropped


def test_every_stage_runs_and_is_recorded(uninterrupted):
    run_dir, summary = uninterrupted
    stages = json.loads((run_dir / "stages.json").read_text())
    assert summary["stages"] == stages
    assert [s["index"] for s in stages] == [0, 1, 2]
    assert [s["cells"] for s in stages] == CELLS
    assert [s["ops_per_edge"] for s in stages] == OPS_PER_EDGE
    assert summary["steps"] == 3 * STEPS_PER_STAGE == sum(s["steps"] for s in stages)

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [(row["step"], row["stage"]) for row in metrics] == [
        (1, 0),
        (2, 0),
        (3, 1),
        (4, 1),
        (5, 2),
        (6, 2),
    ]
    per_epoch = read_jsonl(run_dir / "genotypes.jsonl")
    assert [(row["epoch"], row["stage"]) for row in per_epoch] == [(0, 0), (1, 1), (2, 2)]
    # The networks of each stage have the stage's cells and op subsets.
    for stage in stages:
        architectures = load_architectures(run_dir / stage["architecture"])
        for k, learner in enumerate(stage["learners"]):
            for cell in ("normal", "reduce"):
                alpha = architectures[k][f"alpha_{cell}"]
                assert tuple(alpha.shape) == (num_edges(STEPS), stage["ops_per_edge"])
                assert all(len(ops) == stage["ops_per_edge"] for ops in learner["ops"][cell])
    assert per_epoch[-1]["genotypes"] == summary["genotypes"]


def test_ops_dropped_between_stages_are_the_weakest_of_the_saved_weights(uninterrupted):
    run_dir, summary = uninterrupted
    stages = summary["stages"]
    for k in range(2):
        assert stages[0]["learners"][k]["ops"]["normal"] == [list(PRIMITIVES)] * num_edges(STEPS)
    for before, after in zip(stages, stages[1:], strict=False):
        architectures = load_architectures(run_dir / f"architecture-stage{before['index']}.pt")
        keep = OPS_KEPT[before["index"]]
        assert before["ops_kept"] == keep
        for k, (learner, following) in enumerate(
            zip(before["learners"], after["learners"], strict=True)
        ):
            for cell in ("normal", "reduce"):
                ops, dropped = learner["ops"][cell], learner["dropped"][cell]
                assert dropped == weakest_ops(architectures[k][f"alpha_{cell}"], ops, keep)
                # The next stage keeps the rest, in their original order.
                assert following["ops"][cell] == [
                    [op for op in edge if op not in gone]
                    for edge, gone in zip(ops, dropped, strict=True)
                ]
                assert all(len(edge) == keep for edge in following["ops"][cell])
    assert all(learner["dropped"] is None for learner in stages[-1]["learners"])
    assert stages[-1]["ops_kept"] is None


def test_final_genotypes_come_from_the_last_stage_with_the_skip_limit(uninterrupted):
    run_dir, summary = uninterrupted
    last = summary["stages"][-1]
    final = load_architectures(run_dir / "architecture.pt")
    staged = load_architectures(run_dir / "architecture-stage2.pt")
    assert final.keys() == staged.keys() == {0, 1}
    assert all(torch.equal(final[k][name], staged[k][name]) for k in final for name in final[k])
    for k, genotype in enumerate(summary["genotypes"]):
        assert genotype == last["learners"][k]["genotype"]
        assert summary["val_acc"][k] == last["learners"][k]["val_acc"]
        parsed = genotype_from_dict(genotype)
        validate_genotype(parsed, steps=STEPS, primitives=PRIMITIVES)
        assert sum(op == "skip_connect" for op, _ in parsed.normal) <= MAX_SKIPS
        ops = last["learners"][k]["ops"]["normal"]
        weights = torch.softmax(final[k]["alpha_normal"], dim=-1)
        assert parsed.normal == limit_skip_connects(weights, ops, steps=STEPS, max_skips=MAX_SKIPS)
        # Every chosen op is one of its edge's last-stage candidates.
        for cell in ("normal", "reduce"):
            for position, (op, source) in enumerate(getattr(parsed, cell)):
                edge = num_edges(position // 2) + source
                assert op in last["learners"][k]["ops"][cell][edge]


def stop_after(step: int, monkeypatch):
    """P-DARTS whose step hook sends this process SIGTERM before step ``step``: the search
    finishes that step, checkpoints and stops."""
    calls = 0

    def hook(learners, progress):
        nonlocal calls
        calls += 1
        if calls == step:
            os.kill(os.getpid(), signal.SIGTERM)
        set_search_progress(learners, progress)

    p_darts = SEARCH_METHODS["p_darts"]
    monkeypatch.setitem(SEARCH_METHODS, "p_darts", SearchMethod("p_darts", p_darts.build, hook))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k][name], b[k][name]) for k in a for name in a[k]
    )


@pytest.mark.parametrize(
    ("stop_step", "stage", "stage_step"),
    [(3, 1, 1), (2, 0, 2)],  # mid-stage (mid-epoch), and the last step of the first stage
    ids=["mid-stage", "stage-boundary"],
)
def test_resume_after_sigterm_gives_the_uninterrupted_result(
    uninterrupted, tmp_path, monkeypatch, stop_step, stage, stage_step
):
    full_dir, full = uninterrupted
    with monkeypatch.context() as patch:
        stop_after(stop_step, patch)
        with pytest.raises(SearchInterrupted, match=f"after step {stop_step} of 6"):
            run_search(p_darts_config(tmp_path))
    assert not (tmp_path / "summary.json").exists()
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["position"]["stage"] == stage
    assert state["engine"]["global_step"] == stage_step
    assert (state["position"]["op_subsets"][0] is None) == (stage == 0)

    resumed = run_search(load_run_config(tmp_path, []), resume=True)
    for name in ["architecture.pt"] + [f"architecture-stage{i}.pt" for i in range(3)]:
        assert same_tensors(
            load_architectures(full_dir / name), load_architectures(tmp_path / name)
        ), name
    assert resumed["genotypes"] == full["genotypes"]
    assert resumed["stages"] == full["stages"]
    full_rows, resumed_rows = (read_jsonl(d / "metrics.jsonl") for d in (full_dir, tmp_path))
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in full_rows]
    assert [r["learner1/w_train_loss"] for r in resumed_rows] == [
        r["learner1/w_train_loss"] for r in full_rows
    ]
    assert len(read_jsonl(tmp_path / "genotypes.jsonl")) == 3


def test_non_staged_methods_are_one_stage():
    cfg = p_darts_config(Path("unused"))
    cfg.search.method = "darts"
    (stage,) = methods.search_stages(cfg)
    assert (stage.index, stage.epochs, stage.first_epoch, stage.p_darts) == (0, 1, 0, None)
    assert stage.is_last
