"""The progress line keeps bar, step count, ETA, loss and val at 80 columns (the run name is cut first);
every run and probe ends with one line."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
from rich.console import Console as RichConsole

from harness.engine.console import Console, fit_line, summary_line
from harness.studies.probe import probe_summary_line

NAME = "granet-resnet20-mnist1d-s0-3f0c9a1b2e"
EPOCH = {
    "kind": "epoch", "step": 420, "epoch": 2, "train/loss": 1.71654, "val/acc": 0.416, "test/acc": 0.356,
    "density": 0.1, "lr": 0.1,
}  # fmt: skip
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_drawn_line_fits_and_keeps_bar_count_and_eta(width):
    screen = io.StringIO()
    terminal = RichConsole(file=screen, width=width, force_terminal=True, color_system=None)
    console = Console(NAME, total_steps=840, start_step=0, interactive=True, terminal=terminal)
    console.record(EPOCH)
    console.close()
    lines = [ANSI.sub("", line) for line in screen.getvalue().replace("\r", "\n").splitlines()]
    (line,) = {line.rstrip() for line in lines if "420/840" in line}
    assert len(line) <= width
    assert re.search(r"━{9,}", line)  # the bar, half drawn
    assert re.search(r" 420/840 ", line)
    assert re.search(r"\d:\d\d:\d\d|-:--:--", line)  # the ETA
    # The live numbers follow the ETA at every width; the name comes last, whole only where there is room.
    assert re.search(
        r"\d:\d\d:\d\d loss 1\.7165 \| val 0\.4160 \| epoch 2", line.replace("-:--:--", "0:00:00")
    )
    if width == 80:
        assert NAME[:6] not in line  # under 6 characters of it would fit: dropped
    if width == 200:
        assert line.endswith(f"density 0.1000 | lr 0.1 {NAME}")


def test_the_name_is_cut_before_the_epoch_numbers():
    status = "loss 1.7165 | val 0.4160 | epoch 2 | test 0.3560 | density 0.1000 | lr 0.1"
    # 80 columns: 20 bar + 7 count + 7 ETA + 5 spaces leave 41 for status and name: the status, cut.
    name, shown = fit_line(NAME, status, 840, 80)
    assert (
        name == "" and shown == status[:40] + "…" and shown.startswith("loss 1.7165 | val 0.4160 | epoch 2")
    )
    # With room for the status, only the name shrinks.
    name, shown = fit_line(NAME, status, 840, 130)
    assert shown == status and name == NAME[: 130 - 39 - len(status) - 1] + "…"
    assert len(name) + len(status) == 130 - 39
    # A name that fits stays whole; one that would keep under 6 characters goes.
    assert fit_line("short", "x", 840, 80) == ("short", "x")
    assert fit_line(NAME, "y" * 36, 840, 80) == ("", "y" * 36)
    assert fit_line(NAME, "y" * 34, 840, 80) == (NAME[:6] + "…", "y" * 34)


def test_summary_line_of_a_run():
    summary = {
        "run_id": NAME, "test_acc": 0.876, "test_acc_at_best_val": 0.89, "density": 0.1, "wall_time_s": 77.4,
    }  # fmt: skip
    assert summary_line(summary) == (
        f"{NAME}: done | test acc 0.8760 | at best val 0.8900 | density 0.1000 | wall 1m17s"
    )


def test_summary_line_of_a_probe_says_what_it_pruned_and_regrew():
    summary = {
        "run_id": "probe-x", "pruning_rate": 0.7, "criterion": "global", "regeneration": True,
        "acc_pre": 0.9, "acc_post": 0.31, "acc_continue": 0.88, "plasticity": -0.02, "density": 1.0,
        "wall_time_s": 4.2, "test_acc": 0.88,
    }  # fmt: skip
    assert probe_summary_line(summary) == (
        "probe-x: pruned 70% of the remaining weights (global), regrew as many by gradient | acc_pre 0.9000 | "
        "acc_post 0.3100 | acc_continue 0.8800 | plasticity -0.0200 | density 1.0000 | wall 4s"
    )
    without = summary | {"regeneration": False, "density": 0.3}
    assert ", regrew" not in probe_summary_line(without) and "density 0.3000" in probe_summary_line(without)
    control = summary | {"pruning_rate": 0.0}
    assert (
        probe_summary_line(control)
        == summary_line(control)
        == "probe-x: done | test acc 0.8800 | density 1.0000 | wall 4s"
    )


def test_every_run_and_probe_ends_with_its_summary_line(harness_cli, caplog):
    caplog.set_level(logging.INFO, logger="harness.engine.loop")
    common = ("--dataset", "synthetic", "--runs-dir", str(harness_cli.runs_dir), "--wandb", "disabled")
    result = harness_cli.invoke(
        "plasticity",
        "--probe-epoch",
        "1",
        "--pruning-rate",
        "0.5",
        "--regeneration",
        "--probe-every",
        "1",
        *common,
    )
    assert result.exit_code == 0, result.stderr
    lines = [record.getMessage() for record in caplog.records if record.name == "harness.engine.loop"]
    endings = [line for line in lines if " | wall " in line]
    summaries = [
        json.loads((Path(path) / "summary.json").read_text()) for path in _run_dirs(harness_cli.runs_dir)
    ]
    by_job = {summary["job_type"]: summary for summary in summaries}
    assert endings == [
        summary_line(by_job["base"]),
        *(probe_summary_line(by_job[job]) for job in ("control", "probe")),
    ]
    assert endings[0].startswith(f"{by_job['base']['run_id']}: done | test acc ")
    assert "pruned 50% of the remaining weights (global), regrew as many by gradient | acc_pre" in endings[2]


def _run_dirs(root: Path) -> list[Path]:
    return [path.parent for path in root.glob("*/*/summary.json")]
