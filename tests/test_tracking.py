"""The local run store (exact file contents, resume rewinding) and the W&B mirror (real, offline)."""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import wandb
except ImportError:  # the mirror tests skip; everything else runs without W&B
    wandb = None

from harness.config import Config, TrackingConfig, dump_yaml, load_config_file
from harness.errors import UserError
from harness.store import rundir, snapshots, tracking
from harness.store.rundir import read_metrics
from harness.store.tracking import RunStore, Tracker, open_tracker

RUN_ID = "granet-resnet20-mnist1d-s0-0123456789"
TAGS = ["granet", "resnet20", "mnist1d"]
LAYERS = ("conv1.weight", "fc.weight")


def _config(**tracking_fields) -> Config:
    fields = {"wandb": "disabled", "group": "study-grp7", "job_type": "probe", "log_every": 10}
    return Config(tracking=TrackingConfig(**(fields | tracking_fields)))


def _open(run_dir: Path, config: Config, *, resume_step: int | None = None, is_main: bool = True) -> Tracker:
    return open_tracker(
        run_dir,
        config.to_dict(),
        tracking=config.tracking,
        run_id=RUN_ID,
        tags=TAGS,
        is_main=is_main,
        resume_step=resume_step,
    )


def _masks(step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return {name: torch.rand(4, 6, generator=generator) < 0.5 for name in LAYERS}


def _mask_update(step: int) -> dict:
    record = {"kind": "mask_update", "step": step, "epoch": step / 20, "density": 0.5, "target_density": 0.5}
    for name in LAYERS:
        record |= {f"layers/{name}/density": 0.5, f"layers/{name}/pruned": 3, f"layers/{name}/dropped": 1}
    return record


def _play(tracker: Tracker, steps: range) -> None:
    """A miniature training run: a train line every 10 steps, a mask update every 30, an epoch every 20."""
    for step in steps:
        if step == 0:
            tracker.log_masks(0, _masks(0))
        if step and step % 10 == 0:
            tracker.log(
                {"kind": "train", "step": step, "epoch": step / 20, "train/loss": 1 / step, "lr": 0.1}
            )
        if step and step % 30 == 0:
            tracker.log(_mask_update(step))
            tracker.log_masks(step, _masks(step))
        if step and step % 20 == 0:
            tracker.log(
                {"kind": "epoch", "step": step, "epoch": step // 20, "val/acc": None, "test/acc": 0.25}
            )


# ---------------------------------------------------------------------------------------------------------
# Local store


def test_fresh_run_writes_the_contract_files_exactly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # disabled means never imported: importing would fail
    config = _config()
    run_dir = tmp_path / "study-grp7" / RUN_ID
    tracker = _open(run_dir, config)

    assert (run_dir / "status").read_text() == "running\n"
    assert (run_dir / "config.yaml").read_text() == dump_yaml(config)
    assert load_config_file(run_dir / "config.yaml") == config

    tracker.log({"kind": "train", "step": 50, "epoch": 0.5, "train/loss": 1.25, "lr": 0.1})
    tracker.log({"kind": "epoch", "step": 100, "epoch": 1, "val/acc": None, "test/acc": 0.5})
    tracker.finish("completed", {"run_id": RUN_ID, "test_acc": 0.5, "best_val_acc": None})

    assert (run_dir / "metrics.jsonl").read_text() == (
        '{"kind": "train", "step": 50, "epoch": 0.5, "train/loss": 1.25, "lr": 0.1}\n'
        '{"kind": "epoch", "step": 100, "epoch": 1, "val/acc": null, "test/acc": 0.5}\n'
    )
    assert json.loads((run_dir / "summary.json").read_text()) == {
        "run_id": RUN_ID,
        "test_acc": 0.5,
        "best_val_acc": None,
    }
    assert (run_dir / "status").read_text() == "completed\n"
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "status",
        "summary.json",
    ]


def _strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_and_non_python_numbers_are_written_as_strict_json(tmp_path: Path) -> None:
    tracker = _open(tmp_path / "run", _config())
    tracker.log(
        {
            "kind": "train",
            "step": np.int64(7),
            "epoch": torch.tensor(0.5),
            "train/loss": float("nan"),
            "grad": float("-inf"),
            "count": np.int32(3),
            "density": np.float32(0.25),
            "layers": [float("inf"), 1.5],
        }
    )
    tracker.finish("failed", {"test_loss": float("nan"), "nested": {"x": np.float64("inf")}})

    line = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert _strict_json(line) == {
        "kind": "train",
        "step": 7,
        "epoch": 0.5,
        "train/loss": None,
        "grad": None,
        "count": 3,
        "density": 0.25,
        "layers": [None, 1.5],
    }
    assert _strict_json((tmp_path / "run" / "summary.json").read_text()) == {
        "test_loss": None,
        "nested": {"x": None},
    }
    assert (tmp_path / "run" / "status").read_text() == "failed\n"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"step": 1, "epoch": 0.1}, "lacks kind"),
        ({"kind": "train", "epoch": 0.1}, "lacks step"),
        ({"kind": "train", "step": 1.0, "epoch": 0.1}, "step must be an int"),
        ({"kind": "train", "step": 1, "epoch": "one"}, "epoch must be a number"),
    ],
)
def test_incomplete_records_are_refused_and_nothing_is_written(
    tmp_path: Path, record: dict, message: str
) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match=message):
        store.append(record)
    assert not store.metrics_path.exists()


def test_unloggable_value_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"^weights: a tensor of shape \(3,\) is not a loggable number$"):
        RunStore(tmp_path).append({"kind": "train", "step": 1, "epoch": 0.1, "weights": torch.ones(3)})


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    tracker = _open(tmp_path / "run", _config(wandb="offline"), is_main=False)
    tracker.log({"kind": "train", "step": 1, "epoch": 0.1})
    tracker.log_masks(0, _masks(0))
    tracker.finish("completed", {"test_acc": 1.0})
    assert not (tmp_path / "run").exists()


def test_mask_snapshots_are_loadable_and_can_be_switched_off(tmp_path: Path) -> None:
    tracker = _open(tmp_path / "on", _config())
    tracker.log_masks(30, _masks(30))
    saved = tmp_path / "on" / "masks" / "step_000000030.npz"
    assert rundir.snapshot_step(saved) == 30
    loaded = snapshots.load_masks(saved)
    assert {name: torch.from_numpy(mask) for name, mask in loaded.items()}.keys() == set(LAYERS)
    for name in LAYERS:
        assert np.array_equal(loaded[name], _masks(30)[name].numpy())

    quiet = _open(tmp_path / "off", _config(mask_snapshots=False))
    quiet.log_masks(30, _masks(30))
    assert not (tmp_path / "off" / "masks").exists()


def test_exception_inside_the_tracker_block_marks_the_run_failed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with _open(tmp_path / "run", _config()) as tracker:
            tracker.log({"kind": "train", "step": 1, "epoch": 0.1})
            raise RuntimeError("boom")
    assert (tmp_path / "run" / "status").read_text() == "failed\n"
    assert not (tmp_path / "run" / "summary.json").exists()


def test_finish_writes_once(tmp_path: Path) -> None:
    tracker = _open(tmp_path / "run", _config())
    tracker.finish("completed", {"test_acc": 0.5})
    tracker.finish("failed", {"test_acc": 0.0})
    assert (tmp_path / "run" / "status").read_text() == "completed\n"
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"test_acc": 0.5}


def _snapshot_bytes(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((run_dir / "masks").iterdir())}


def test_resumed_run_files_equal_an_uninterrupted_runs(tmp_path: Path) -> None:
    config = _config()
    summary = {"run_id": RUN_ID, "test_acc": 0.25}

    uninterrupted = _open(tmp_path / "a", config)
    _play(uninterrupted, range(0, 121))
    uninterrupted.finish("completed", summary)

    crashed_dir = tmp_path / "b"
    crashed = _open(crashed_dir, config)
    _play(crashed, range(0, 95))  # last checkpoint at step 60; the crash comes at step 94
    with open(crashed_dir / "metrics.jsonl", "ab") as handle:
        handle.write(b'{"kind": "train", "step": 9')  # torn by the crash
    (crashed_dir / "masks" / "step_000000120.npz.tmp").write_bytes(b"partial")
    assert [rundir.snapshot_step(path) for path in RunStore(crashed_dir).mask_snapshots()] == [0, 30, 60, 90]

    resumed = _open(crashed_dir, config, resume_step=60)
    assert [record["step"] for record in read_metrics(crashed_dir / "metrics.jsonl")][-1] == 60
    _play(resumed, range(61, 121))
    resumed.finish("completed", summary)

    for name in ("config.yaml", "status", "metrics.jsonl", "summary.json"):
        assert (crashed_dir / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    assert _snapshot_bytes(crashed_dir) == _snapshot_bytes(tmp_path / "a")


def test_fresh_start_in_a_used_directory_forgets_earlier_results(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = _open(run_dir, _config())
    _play(first, range(0, 61))
    first.finish("failed", {"test_acc": 0.1})

    second = _open(run_dir, _config(), resume_step=None)
    assert (run_dir / "status").read_text() == "running\n"
    assert not (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / "summary.json").exists()
    assert RunStore(run_dir).mask_snapshots() == []
    second.log({"kind": "train", "step": 10, "epoch": 0.5})
    assert [record["step"] for record in read_metrics(run_dir / "metrics.jsonl")] == [10]


def test_torn_last_line_is_ignored_but_a_damaged_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1, "epoch": 0.1}\n{"kind": "tr')
    assert read_metrics(path) == [{"kind": "train", "step": 1, "epoch": 0.1}]

    path.write_text(
        '{"kind": "train", "step": 1, "epoch": 0.1}\nNaN garbage\n{"kind": "x", "step": 2, "epoch": 1}\n'
    )
    with pytest.raises(UserError, match=f"^{path}:2: not a JSON object line"):
        read_metrics(path)


def test_unwritable_run_directory_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match=f"^{blocker / 'run'}: cannot create the run directory"):
        _open(blocker / "run", _config())


# ---------------------------------------------------------------------------------------------------------
# W&B mirror (real wandb, offline; every W&B directory inside tmp_path)


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """Point every W&B directory into tmp_path; shut W&B's service down afterwards so the next test's
    environment is read afresh."""
    if wandb is None:
        pytest.skip("wandb is not installed")
    home = tmp_path / "wandb-home"
    for variable in (
        "WANDB_DIR",
        "WANDB_CACHE_DIR",
        "WANDB_CONFIG_DIR",
        "WANDB_DATA_DIR",
        "WANDB_ARTIFACT_DIR",
    ):
        directory = home / variable.lower()
        directory.mkdir(parents=True)
        monkeypatch.setenv(variable, str(directory))
    for variable in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_PROJECT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    yield home
    wandb.teardown()


def _offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted(wandb_dir.glob(f"wandb/offline-run-*-{RUN_ID}"))


def test_offline_mirror_records_config_metrics_summary_and_mask_artifacts(
    tmp_path: Path, wandb_env: Path
) -> None:
    run_dir = tmp_path / "runs" / "study-grp7" / RUN_ID
    tracker = _open(run_dir, _config(wandb="offline"))
    tracker.log_masks(0, _masks(0))
    tracker.log(_mask_update(30))
    tracker.log_masks(30, _masks(30))
    tracker.log({"kind": "epoch", "step": 40, "epoch": 1, "test/acc": 0.875, "val/acc": float("nan")})
    tracker.finish("completed", {"run_id": RUN_ID, "test_acc": 0.875, "inference_flops_rel": 0.125})
    # run.finish() returns before wandb-core has flushed the .wandb file; that happens when its service
    # stream closes (at interpreter exit in a real run). Close it now to read the files.
    wandb.teardown()

    # WANDB_DIR is set, so W&B's files are there and not in the run directory.
    assert not (run_dir / "wandb").exists()
    (offline_run,) = _offline_runs(wandb_env / "wandb_dir")
    (binary,) = offline_run.glob("*.wandb")
    # W&B 0.31 offline keeps config, history and summary only inside this binary protobuf log (no
    # config.yaml or wandb-summary.json, no public reader). Its strings are stored verbatim; this run is
    # far below the 32 KiB block size, so none is split by a block header.
    content = binary.read_bytes()
    for expected in (
        RUN_ID,
        "study-grp7",  # group
        "probe",  # job_type
        *TAGS,
        '"job_type":"probe"',  # the config, as nested JSON per section
        "layers/conv1.weight/density",  # per-layer keys of the mask_update record
        "test/acc",
        "inference_flops_rel",  # summary
        f"masks-{RUN_ID}",  # the mask artifact ...
        "step_000000030.npz",  # ... and its files
    ):
        assert expected.encode() in content, expected

    # Artifact files are logged by reference to masks/: nothing is copied into W&B's global staging folder,
    # so a later `wandb sync` finds every payload inside the run directory (tests/test_wandb_offline.py).
    staging = wandb_env / "wandb_data_dir" / "artifacts" / "staging"
    assert not staging.exists() or not any(staging.iterdir())
    assert len(list((run_dir / "masks").iterdir())) == 2

    # The local store is complete on its own.
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [record["kind"] for record in records] == ["mask_update", "epoch"]
    assert records[1]["val/acc"] is None


def test_offline_mirror_without_wandb_dir_lives_in_the_run_dir_and_resumes_by_id(
    tmp_path: Path, wandb_env: Path, monkeypatch
) -> None:
    monkeypatch.delenv("WANDB_DIR")
    run_dir = tmp_path / "run"
    first = _open(run_dir, _config(wandb="offline"))
    first.log({"kind": "train", "step": 10, "epoch": 0.5})
    first.finish("failed")
    # W&B names offline folders by wall-clock second; a resume within the same second would share one.
    _wait_for_next_second()

    second = _open(run_dir, _config(wandb="offline"), resume_step=10)
    second.log({"kind": "train", "step": 20, "epoch": 1.0})
    second.finish("completed", {"test_acc": 0.5})
    wandb.teardown()  # flushes the .wandb files (see the test above)

    offline_runs = _offline_runs(run_dir)
    assert len(offline_runs) == 2  # one folder per process segment, both carrying the run id
    assert all(next(path.glob(f"run-{RUN_ID}.wandb")).stat().st_size > 0 for path in offline_runs)
    assert [record["step"] for record in read_metrics(run_dir / "metrics.jsonl")] == [10, 20]


def _wait_for_next_second() -> None:
    now = time.time()
    time.sleep(math.ceil(now) - now + 0.01)


def _closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_wandb_init_failure_warns_once_and_the_run_goes_on(
    tmp_path: Path, wandb_env: Path, monkeypatch, caplog
) -> None:
    # A real failure: online mode against a server that refuses connections (on this machine's loopback).
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_loopback_port()}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "WANDB_INIT_TIMEOUT_S", 3.0)
    caplog.set_level(logging.WARNING, logger="harness.store.tracking")

    tracker = _open(tmp_path / "run", _config(wandb="online"))
    _play(tracker, range(0, 61))
    tracker.finish("completed", {"test_acc": 0.5})

    # W&B's own "wandb" logger does not propagate (its errors go to its debug.log), but pytest's capture
    # still sees it; what a user's console shows is the harness's one warning.
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and record.name.startswith("harness")
    ]
    assert len(warnings) == 1 and warnings[0].startswith("W&B mirror off: wandb.init failed")
    assert (tmp_path / "run" / "status").read_text() == "completed\n"
    assert [record["step"] for record in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [
        10,
        20,
        20,
        30,
        30,
        40,
        40,
        50,
        60,
        60,
        60,
    ]


def test_wandb_failure_mid_run_warns_once_and_the_local_store_keeps_everything(
    tmp_path: Path, wandb_env: Path, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="harness.store.tracking")
    tracker = _open(tmp_path / "run", _config(wandb="offline"))
    assert isinstance(tracker, tracking.RunTracker) and tracker.mirror is not None and tracker.mirror.active

    def broken_log(*args, **kwargs) -> None:
        raise ConnectionError("disk or service gone")

    tracker.mirror._run.log = broken_log
    _play(tracker, range(0, 61))
    tracker.finish("completed", {"test_acc": 0.5})

    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings == [
        "W&B mirror off after log failed (ConnectionError: disk or service gone); the local run store is complete"
    ]
    assert not tracker.mirror.active
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 11
    assert (tmp_path / "run" / "status").read_text() == "completed\n"


class _RecordingWandb:
    """Stands in for the wandb module's init: records its arguments and the agent's variables it saw."""

    def __init__(self, monkeypatch) -> None:
        import wandb

        self.calls: list[dict] = []
        monkeypatch.setattr(wandb, "init", self.init)

    def init(self, **kwargs):
        import os

        seen = {name: os.environ.get(name) for name in ("WANDB_SWEEP_ID", "WANDB_RUN_ID")}
        self.calls.append({**kwargs, "environment": seen})

        class Run:
            dir = "unused"

            def define_metric(self, *args, **kwargs) -> None:
                pass

        return Run()


@pytest.mark.parametrize("sweep_run", [True, False])
def test_under_a_sweep_agent_only_the_launched_run_joins_the_sweep(
    tmp_path: Path, monkeypatch, sweep_run
) -> None:
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun9")
    recorder = _RecordingWandb(monkeypatch)
    monkeypatch.setattr(tracking, "_has_credentials", lambda wandb: True)

    mirror = tracking.WandbMirror.open(
        tmp_path, {"data": {}}, tracking=TrackingConfig(), run_id="granet-x-1", tags=[], resumed=False,
        sweep_run=sweep_run,
    )  # fmt: skip

    assert mirror is not None and len(recorder.calls) == 1
    call = recorder.calls[0]
    assert call["name"] == "granet-x-1"
    if sweep_run:
        # The agent's run: its id, online (a sweep sees only online runs) though the config says offline.
        assert (call["id"], call["mode"]) == ("agentrun9", "online")
        assert call["environment"] == {"WANDB_SWEEP_ID": "sweep123", "WANDB_RUN_ID": "agentrun9"}
    else:
        # A base or control run: an ordinary run of the project, started with the agent's variables hidden.
        assert (call["id"], call["mode"]) == ("granet-x-1", "offline")
        assert call["environment"] == {"WANDB_SWEEP_ID": None, "WANDB_RUN_ID": None}
    import os

    assert (os.environ["WANDB_SWEEP_ID"], os.environ["WANDB_RUN_ID"]) == ("sweep123", "agentrun9")
