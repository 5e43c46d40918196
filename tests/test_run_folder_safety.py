"""Run folders from anywhere are safe: nothing in them executes on load, every write is durable,
no secret of the environment reaches a run folder, W&B or the console."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cifar_archives import write_cifar10
from omegaconf import OmegaConf
from torch.utils._pytree import tree_map

import sgl_betty.tracking.durable as durable
from sgl_betty.data import DatasetCorruptedError, load_cifar, write_local_checksums
from sgl_betty.experiment import interruption
from sgl_betty.experiment.config import ConfigError, load_config, to_yaml
from sgl_betty.tracking import atomic_write_bytes, save_torch_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "benchmarks" / "cifar100.py"
COMPARE = ROOT / "benchmarks" / "compare.py"
CONFIGS = ROOT / "configs"
sys.path.insert(0, str(ROOT / "benchmarks"))
from search_runs import SEARCH, full_and_stopped_search, same_architectures  # noqa: E402

from recipe import main  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class CreatesMarker:
    """Unpickling this runs os.mkdir(marker): what a crafted checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def write_malicious(path: Path, marker: Path, **entries) -> None:
    torch.save({**entries, "payload": CreatesMarker(marker)}, path)


def run_script(script: Path, *args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
        cwd=cwd,
        timeout=300,
    )


def assert_clean_error(result, *expected: str) -> None:
    """Non-zero exit and one paragraph on stderr saying the problem, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def crafted_folder(path: Path, kind: str, marker: Path, *, run_file: bool = True) -> Path:
    """A run folder as a colleague could send it: a real config.yaml, crafted torch files."""
    path.mkdir(parents=True)
    overrides = SEARCH if kind == "search" else [*SEARCH, "eval.genotype=DARTS_V2"]
    cfg = load_config([*overrides, f"run.dir={path}"], config_dir=CONFIGS)
    (path / "config.yaml").write_text(to_yaml(cfg))
    if run_file:
        (path / "run.json").write_text(json.dumps({"kind": kind, "format": 2}))
    write_malicious(path / "checkpoint.pt", marker, format=2, kind=kind)
    if kind == "search":
        write_malicious(path / "architecture.pt", marker)
        write_malicious(path / "architecture-stage0.pt", marker)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER-code-ran"
    yield path
    assert not path.exists(), "unpickling ran code from a crafted file"


@pytest.mark.slow
def test_resume_refuses_a_crafted_search_checkpoint(tmp_path, marker):
    folder = crafted_folder(tmp_path / "search", "search", marker)
    result = run_script(RECIPE, "--resume", folder)
    assert_clean_error(result, "checkpoint.pt", "--trust-checkpoint")


@pytest.mark.slow
def test_resume_of_an_old_folder_tells_its_kind_without_unpickling(tmp_path, marker):
    # No run.json (a folder of an earlier version): its checkpoint is only read as plain data.
    folder = crafted_folder(tmp_path / "old", "search", marker, run_file=False)
    result = run_script(RECIPE, "--resume", folder)
    assert_clean_error(result, "checkpoint.pt", "--trust-checkpoint")


@pytest.mark.slow
def test_eval_resume_refuses_a_crafted_evaluation_checkpoint(tmp_path, marker):
    folder = crafted_folder(tmp_path / "eval", "eval", marker)
    result = run_script(RECIPE, "--stage", "eval", "--resume", folder)
    assert_clean_error(result, "checkpoint.pt", "--trust-checkpoint")


@pytest.mark.slow
def test_genotype_of_a_crafted_search_folder_reads_json_only(tmp_path, marker):
    folder = crafted_folder(tmp_path / "search", "search", marker)
    result = run_script(
        RECIPE, "--stage", "eval", "preset=tiny", f"eval.genotype={folder}:0", cwd=tmp_path
    )
    assert_clean_error(result, "summary.json")
    # With a summary, the genotype comes from it; the crafted torch files stay unread.
    genotype = {
        "normal": [["skip_connect", 0]] * 4,
        "normal_concat": [2, 3],
        "reduce": [["max_pool_3x3", 1]] * 4,
        "reduce_concat": [2, 3],
    }
    summary = {"genotypes": [genotype], "val_acc": [0.5]}
    (folder / "summary.json").write_text(json.dumps(summary))
    result = run_script(
        RECIPE,
        "--stage",
        "eval",
        "preset=tiny",
        f"eval.genotype={folder}:0",
        f"run.dir={tmp_path / 'evaluation'}",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "evaluation" / "summary.json").read_text())["genotype"] == (
        json.loads(json.dumps(genotype))
    )


@pytest.mark.slow
def test_compare_reads_crafted_folders_without_unpickling(tmp_path, marker):
    search = crafted_folder(tmp_path / "search", "search", marker)
    evaluation = crafted_folder(tmp_path / "eval", "eval", marker)
    result = run_script(COMPARE, search, evaluation)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: none of the given folders is a finished run folder" in result.stderr


# ---- checkpoints of earlier versions -----------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted_and_full(tmp_path_factory):
    return full_and_stopped_search(main, tmp_path_factory.mktemp("legacy"))


def as_old_format(folder: Path, **extra) -> None:
    """Rewrite ``folder``'s checkpoint as the previous version wrote it: numpy's RNG state as a
    tuple with a numpy array, no format or kind entry, and no run.json."""
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    for rng in state["rng"]:
        numpy_state = rng["numpy"]
        rng["numpy"] = (
            numpy_state["bit_generator"],
            numpy_state["state"]["key"].numpy().astype(np.uint32),
            numpy_state["state"]["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    del state["format"], state["kind"]
    torch.save({**state, **extra}, folder / "checkpoint.pt")
    (folder / "run.json").unlink()


@pytest.mark.slow
def test_an_old_checkpoint_is_converted_once_and_resumes_bitwise(
    interrupted_and_full, tmp_path, capsys
):
    full, stopped = interrupted_and_full
    folder = shutil.copytree(stopped, tmp_path / "old")
    as_old_format(folder)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(folder / "checkpoint.pt", weights_only=True)

    assert main("cifar100", ["--resume", str(folder)]) == 0
    assert "converted" in capsys.readouterr().err
    assert same_architectures(folder, full)
    assert json.loads((folder / "run.json").read_text())["kind"] == "search"
    torch.load(folder / "checkpoint.pt", weights_only=True)  # rewritten as plain data


@pytest.mark.slow
def test_an_old_checkpoint_with_other_objects_needs_the_trust_flag(
    interrupted_and_full, tmp_path, capsys
):
    full, stopped = interrupted_and_full
    folder = shutil.copytree(stopped, tmp_path / "old")
    as_old_format(folder, config=OmegaConf.create({"learners": 2}))

    assert main("cifar100", ["--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and "omegaconf" in err.lower()

    assert main("cifar100", ["--resume", str(folder), "--trust-checkpoint"]) == 0
    assert "converted" in capsys.readouterr().err
    assert same_architectures(folder, full)
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["format"] == 2


# ---- what every file write does ------------------------------------------------------------------


def record_write_sequence(monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        path = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        content = path.read_bytes() if path.is_file() else None
        events.append(("fsync", path, content))
        real_fsync(descriptor)

    def replace(source, target):
        events.append(("replace", Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.parametrize("kind", ["bytes", "torch"])
def test_every_atomic_write_fsyncs_the_file_renames_and_fsyncs_the_folder(
    kind, tmp_path, monkeypatch
):
    target = tmp_path / "file"
    target.write_bytes(b"old")
    events = record_write_sequence(monkeypatch)
    if kind == "bytes":
        atomic_write_bytes(target, b"new content")
    else:
        save_torch_file({"weights": torch.arange(4)}, target)

    (file_sync, rename, folder_sync) = events
    temporary = file_sync[1]
    assert temporary.parent == tmp_path and temporary != target
    assert file_sync[2] == target.read_bytes()  # complete when synced
    assert rename == ("replace", temporary, target)
    assert folder_sync[:2] == ("fsync", tmp_path)
    assert sorted(tmp_path.iterdir()) == [target]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(durable.RunFolderError, match="No space left on device"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "summary.json", b"{}")
        save_torch_file({}, tmp_path / "checkpoint.pt")
    finally:
        os.umask(previous)
    for name in ("summary.json", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


class OnGpu(torch.Tensor):
    """A tensor that says it lives on cuda:0 (a CPU machine's stand-in for GPU tensors); moving
    it to the CPU gives the plain tensor it wraps."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, dtype=elem.dtype, device=torch.device("cuda", 0)
        )

    def __init__(self, elem):
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("device") == torch.device("cpu"):
            return args[0].elem.clone()

        def unwrap(value):
            return value.elem if isinstance(value, OnGpu) else value

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        return tree_map(
            lambda value: OnGpu(value) if isinstance(value, torch.Tensor) else value, out
        )


def test_saved_files_hold_cpu_tensors_only(tmp_path):
    module = torch.nn.Linear(3, 2)
    state = {
        "module": {name: OnGpu(value.detach()) for name, value in module.state_dict().items()},
        "optimizer": {"state": {0: {"momentum_buffer": OnGpu(torch.ones(2, 3))}}},
        "rng": [{"cuda": OnGpu(torch.zeros(16, dtype=torch.uint8))}],
        "op_subsets": [(("skip_connect",), ("none",))],
    }
    assert state["module"]["weight"].is_cuda
    save_torch_file(state, tmp_path / "checkpoint.pt")
    # No map_location: the file loads on a machine without a GPU.
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    tensors = [
        loaded["module"]["weight"],
        loaded["module"]["bias"],
        loaded["optimizer"]["state"][0]["momentum_buffer"],
        loaded["rng"][0]["cuda"],
    ]
    assert all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)
    assert torch.equal(loaded["module"]["weight"], module.weight.detach())
    assert loaded["op_subsets"] == [(("skip_connect",), ("none",))]


@pytest.mark.slow
def test_run_folder_torch_files_load_as_plain_data(interrupted_and_full):
    full, stopped = interrupted_and_full
    for path in (stopped / "checkpoint.pt", full / "architecture.pt", full / "checkpoint.pt"):
        torch.load(path, weights_only=True)


def test_checkpoints_keep_the_rng_of_the_current_cuda_device_only(monkeypatch):
    device_state = torch.arange(16, dtype=torch.uint8)
    restored = []

    def all_devices(*args):
        raise AssertionError("the RNG states of every device were used")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": device_state.clone())
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state)
    )
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", all_devices)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", all_devices)

    state = interruption.rng_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert torch.equal(loaded["cuda"], device_state)
    interruption.set_rng_state(loaded)
    assert len(restored) == 1 and torch.equal(restored[0], device_state)

    # A checkpoint of an earlier version held every device's state: the current one's is kept.
    old = {**state, "cuda": [torch.zeros(16, dtype=torch.uint8), device_state]}
    assert torch.equal(interruption.upgrade_rng_state(old)["cuda"], device_state)


# ---- YAML, interpolations, data integrity ----------------------------------------------------------


def test_presets_are_read_safely_and_python_tags_are_refused(tmp_path, marker):
    (tmp_path / "evil.yaml").write_text(f"learners: !!python/object/apply:os.mkdir ['{marker}']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml.*!!python/object/apply:os\.mkdir.*line 1"):
        load_config(["preset=evil"], config_dir=tmp_path)
    (tmp_path / "broken.yaml").write_text("search:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML.*line 3"):
        load_config(["preset=broken"], config_dir=tmp_path)
    with pytest.raises(ConfigError, match="python/name"):
        load_config(["preset=tiny", "tracking.group=!!python/name:os.system"], config_dir=CONFIGS)


@pytest.mark.slow
def test_resume_refuses_interpolations_in_a_run_config(
    interrupted_and_full, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WANDB_API_KEY", "fake-key-0123456789abcdef")
    _, stopped = interrupted_and_full
    folder = shutil.copytree(stopped, tmp_path / "crafted")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["tracking"]["group"] = "${oc.env:WANDB_API_KEY}"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))

    assert main("cifar100", ["--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "tracking.group: ${oc.env:WANDB_API_KEY}" in err and "fake-key" not in err

    # compare.py skips it and never resolves the interpolation either.
    summary = {"genotypes": [], "val_acc": [], "kind": "search"}
    (folder / "summary.json").write_text(json.dumps({**summary, "genotypes": [{}]}))
    result = run_script(COMPARE, folder, env={**ENV, "WANDB_API_KEY": "fake-key-0123456789abcdef"})
    assert result.returncode == 2 and "interpolations" in result.stderr
    assert "fake-key" not in result.stdout + result.stderr


def test_generated_data_manifest_is_honoured_only_when_asked(tmp_path, marker):
    folder = write_cifar10(tmp_path, images_per_batch=4, test_images=4).folder
    with pytest.raises(DatasetCorruptedError, match="data.local_checksums=true"):
        load_cifar("cifar10", tmp_path, train=True)
    assert len(load_cifar("cifar10", tmp_path, train=True, local_checksums=True)) == 20

    # A folder from elsewhere: a crafted pickle with a manifest that vouches for it.
    write_malicious(folder / "data_batch_1", marker)
    write_local_checksums(folder, generator="someone else")
    with pytest.raises(DatasetCorruptedError, match="md5"):
        load_cifar("cifar10", tmp_path, train=True)


@pytest.mark.slow
def test_no_secret_reaches_the_run_folder_wandb_or_the_console(tmp_path):
    secrets = {
        "WANDB_API_KEY": "fake-wandb-key-0123456789",
        "HF_TOKEN": "fake-hf-token-abcdefgh",
        "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-987654",
    }
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in ENV.items() if not key.startswith("WANDB_")}
    env.update(secrets, HOME=str(home), WANDB_BASE_URL="http://127.0.0.1:9")
    run = tmp_path / "run"
    result = run_script(
        RECIPE,
        *SEARCH,
        "tracking.wandb=true",
        "tracking.mode=offline",
        "tracking.figures=true",
        "run.progress=true",
        f"run.dir={run}",
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert list(run.glob("wandb/offline-run-*/run-*.wandb"))
    written = [path for path in run.rglob("*") if path.is_file()]
    for value in secrets.values():
        assert value not in result.stdout + result.stderr
        for path in written:
            assert value.encode() not in path.read_bytes(), path

    # A config that would carry one is refused before anything is written.
    leak = run_script(
        RECIPE, *SEARCH, "tracking.group=${oc.env:HF_TOKEN}", f"run.dir={tmp_path / 'x'}", env=env
    )
    assert_clean_error(leak, "tracking.group", "HF_TOKEN")
    assert secrets["HF_TOKEN"] not in leak.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_run_folder_records_its_kind_in_run_json(interrupted_and_full):
    full, _ = interrupted_and_full
    assert json.loads((full / "run.json").read_text()) == {
        "kind": "search",
        "format": 2,
        "created": json.loads((full / "run.json").read_text())["created"],
    }


def test_the_refusal_names_the_globals_that_caused_it_first(tmp_path):
    # numpy's globals are allowed; listing them first (torch's order varies) hid the culprit
    # behind "..." in the message.
    from sgl_betty.tracking.torch_files import LEGACY_GLOBALS, _unsafe_message

    unsafe = [*sorted(LEGACY_GLOBALS), "omegaconf.dictconfig.DictConfig"]
    message = _unsafe_message(tmp_path / "checkpoint.pt", "the checkpoint", unsafe)
    assert "omegaconf.dictconfig.DictConfig" in message
    assert "--trust-checkpoint" in message
