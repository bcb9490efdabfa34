"""The five new methods train through `harness run` on MNIST-1D, their scoring passes are counted in
training FLOPs, a method of one's own runs through the CLI as a plug-in (`MODULE:CLASS`) or with one
registry line, with a setting of its own, and a plug-in that breaks the contract is refused in one line."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import HarnessCli
from torch import Tensor

from harness.config import resolve, run_id
from harness.sparse import MaskSet, SparsityMethod, build_method
from harness.sparse.methods.gmp import GradualMagnitude
from harness.sparse.methods.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "methods"
SENSITIVE = "sensitive_gmp:SensitiveGMP"  # the example method, as a plug-in

# Sample-passes of each scoring pass: the first batch of 32 samples (GraSP: one plain and one double
# backpropagation pass counted as two), SynFlow's 100 one-sample rounds.
SCORING_PASSES = {"snip": 32, "grasp": 96, "synflow": 100}


def run(harness_cli: HarnessCli, method: str, *extra: str) -> Path:
    result = harness_cli.invoke(
        "run", method, *harness_cli.mnist1d(epochs=1), "--update-frequency", "3", *extra
    )
    assert result.exit_code == 0, result.stderr
    return Path(result.last_line)


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "mest", "acdc"])
def test_new_methods_train_through_the_cli_to_the_exact_density(harness_cli: HarnessCli, method: str) -> None:
    files = harness_cli.files(run(harness_cli, method))
    assert files.status.strip() == "completed"
    summary = files.summary
    assert summary["method"] == method and summary["sparsity"] == pytest.approx(0.9)
    assert summary["active_weights"] == round(0.1 * summary["masked_weights"])
    events = files.lines("mask_update")
    assert events[0]["step"] == 0
    if method in SCORING_PASSES:
        # The mask is chosen before step 0 and never changes.
        assert [event["step"] for event in events] == [0]
        assert events[0]["density"] == summary["active_weights"] / summary["masked_weights"]
        # Training FLOPs: the scoring pass (dense) plus every step at the fixed sparse network.
        scoring = 3.0 * SCORING_PASSES[method] * summary["inference_flops_dense"]
        steps = summary["train_flops_dense"] * summary["inference_flops_rel"]
        assert summary["train_flops"] == pytest.approx(scoring + steps, rel=1e-12)
    elif method == "mest":
        assert [event["step"] for event in events] == [0, 3, 6]
        assert {event["density"] for event in events} == {events[0]["density"]}
    else:
        # 8 steps: dense warm-up to step 1, then phases of one step, the final compressed one from step 7.
        assert [(event["step"], event["density"] == 1.0) for event in events] == [
            (0, True), (1, False), (2, True), (3, False), (4, True), (5, False), (6, True), (7, False),
        ]  # fmt: skip


class FirstPositions(GradualMagnitude):
    """A test-only method: GMP whose prune score prefers the earliest positions of the whole network."""

    name = "first-positions"

    def prune_scores(self) -> list[Tensor]:
        scores, offset = [], 0
        for weight in self.masks.weights:
            scores.append(-(offset + torch.arange(weight.numel(), dtype=torch.float64)).view(weight.shape))
            offset += weight.numel()
        return scores


def test_a_method_defined_in_a_test_runs_through_harness_run_as_a_plugin(harness_cli: HarnessCli) -> None:
    run_dir = run(harness_cli, "test_methods_cli:FirstPositions")
    files = harness_cli.files(run_dir)
    assert run_dir.name.startswith("test_methods_cli-FirstPositions-resnet20-mnist1d-s0-")
    assert files.status.strip() == "completed"
    assert files.summary["method"] == "test_methods_cli:FirstPositions"
    final = files.lines("mask_update")[-1]
    names = [key.split("/")[1] for key in final if key.startswith("layers/") and key.endswith("/density")]
    masks = files.snapshots()[final["step"]]
    flat = np.concatenate([masks[name].reshape(-1) for name in names])
    keep = round(0.1 * flat.size)
    # Exactly the first `keep` positions of the network, in mask-set order.
    assert flat[:keep].all() and not flat[keep:].any()


def test_the_example_method_trains_with_its_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from sensitive_gmp import SensitiveGMP

    def train(sensitivity: float) -> list[Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        settings = {"sparsity": 0.75, "update_frequency": 2, "prune_end": 0.5, "sensitivity": sensitivity}
        method = build_method(
            "sensitive_gmp:SensitiveGMP", MaskSet.for_model(model), optimizer, settings, total_steps=8
        )
        assert isinstance(method, SensitiveGMP) and method.settings.sensitivity == sensitivity
        inputs, labels = torch.randn(32, 8), torch.randint(0, 3, (32,))
        for _ in range(8):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
            method.step()
        assert sum(method.masks.active_counts()) == 44  # 25% of the 8 x 16 + 16 x 3 weights
        return [mask.clone() for mask in method.masks.masks]

    plain, sensitive = train(0.0), train(50.0)
    assert any(not torch.equal(a, b) for a, b in zip(plain, sensitive, strict=True))


def test_the_example_method_runs_as_a_plugin_and_with_one_registry_line(
    harness_cli: HarnessCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    plugin = run(harness_cli, "sensitive_gmp:SensitiveGMP", "--set", "sparsity.sensitivity=0.5")
    written = yaml.safe_load((plugin / "config.yaml").read_text())["sparsity"]
    # A plug-in's section: the method, its settings in the order its Settings declares them, the mask set.
    assert list(written) == [
        "method", "sparsity", "distribution", "erk_power", "init_sparsity", "update_frequency", "prune_start",
        "prune_end", "sensitivity", "dense_first_layer", "dense_classifier",
    ]  # fmt: skip
    assert written["method"] == "sensitive_gmp:SensitiveGMP" and written["sensitivity"] == 0.5
    assert plugin.name.startswith("sensitive_gmp-SensitiveGMP-resnet20-mnist1d-s0-")
    # Its setting is part of its identity.
    options = {"sparsity": {"update_frequency": 3}}
    ids = {
        run_id(
            resolve(
                "sensitive_gmp:SensitiveGMP",
                dataset="mnist1d",
                overrides={"sparsity": {**options["sparsity"], "sensitivity": value}},
            )
        )
        for value in (0.5, 1.0)
    }
    assert len(ids) == 2
    # The registry line of docs/methods.md makes it a built-in name.
    monkeypatch.setitem(REGISTRY.builtins, "sensitive-gmp", "sensitive_gmp:SensitiveGMP")
    builtin = run(harness_cli, "sensitive-gmp", "--set", "sparsity.sensitivity=0.5")
    assert builtin.name.startswith("sensitive-gmp-resnet20-mnist1d-s0-")
    assert harness_cli.files(builtin).status.strip() == "completed"


class NoDecision(SparsityMethod):
    name = "no-decision"


class LooseSettings(GradualMagnitude):
    name = "loose-settings"
    Settings = dict  # type: ignore[assignment]


class NoName(GradualMagnitude):
    def prune_scores(self) -> list[Tensor]:
        return super().prune_scores()


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (
            "json:JSONDecoder",
            "sparsity.method: plug-in 'json:JSONDecoder' is not a subclass of harness.sparse.SparsityMethod "
            "(got type 'JSONDecoder')",
        ),
        (
            "test_methods_cli:NoDecision",
            "sparsity.method: plug-in 'test_methods_cli:NoDecision' overrides none of initial_density, "
            "is_update_step, update, prepare, prune_scores, drop_scores, growth_scores: it would train dense",
        ),
        (
            "test_methods_cli:NoName",
            "sparsity.method: plug-in 'test_methods_cli:NoName' does not set its own `name` (a short string "
            "for its records)",
        ),
        (
            "test_methods_cli:LooseSettings",
            "sparsity.method: plug-in 'test_methods_cli:LooseSettings': its Settings is not a subclass of "
            "MethodSettings",
        ),
        (
            "no_such_module:Method",
            "sparsity.method: cannot import module 'no_such_module' for plug-in 'no_such_module:Method' (is it "
            "on PYTHONPATH or installed?)",
        ),
    ],
)
def test_a_plugin_that_breaks_the_contract_is_refused_in_one_line(
    harness_cli: HarnessCli, method: str, message: str
) -> None:
    result = harness_cli.invoke("run", method, *harness_cli.mnist1d(epochs=1))
    assert result.exit_code == 2
    assert result.stderr == f"error: {message}\n"
    assert not harness_cli.runs_dir.exists()


def test_the_diff_in_the_methods_guide_adds_the_example_as_a_built_in(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "methods.md").read_text()
    diff = guide.split("```diff\n", 1)[1].split("```\n", 1)[0]
    new_file = diff.split("+++ b/harness/sparse/methods/sensitive_gmp.py\n", 1)[1].split("--- a/", 1)[0]
    added = [line[1:] for line in new_file.splitlines()[1:]]
    assert added == (EXAMPLE / "sensitive_gmp.py").read_text().splitlines()
    patch = tmp_path / "add-method.diff"
    patch.write_text(diff)
    check = subprocess.run(["git", "apply", "--check", str(patch)], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    additions = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(additions) == len(added) + 1  # the file, and one registry line


def install_entry_point(site: Path, name: str, target: str) -> None:
    """An installed distribution declaring `name = target` under harness.methods (a dist-info on sys.path
    is what importlib.metadata finds, as pip leaves it)."""
    info = site / "mylab_methods-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab-methods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[harness.methods]\n{name} = {target}\n")


def test_an_installed_entry_point_names_a_method_and_its_target_is_in_the_run_id(
    harness_cli: HarnessCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    plain = resolve("sensitive_gmp:SensitiveGMP", dataset="mnist1d")
    install_entry_point(tmp_path / "site", "sensitive", "sensitive_gmp:SensitiveGMP")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    named = resolve("sensitive", dataset="mnist1d")
    assert named.sparsity.settings == plain.sparsity.settings
    assert run_id(named).startswith("sensitive-resnet20-mnist1d-s0-")
    assert named.sparsity.method == "sensitive" and "plugin" not in named.to_dict()["sparsity"]
    run_dir = run(harness_cli, "sensitive", "--set", "sparsity.sensitivity=0.25")
    assert run_dir.name.startswith("sensitive-resnet20-mnist1d-s0-")
    assert harness_cli.files(run_dir).status.strip() == "completed"
    # The same name standing for another class is another run.
    other = tmp_path / "other"
    install_entry_point(other, "sensitive", "test_methods_cli:FirstPositions")
    monkeypatch.syspath_prepend(str(other))  # first on the path: its entry point is the one found
    assert run_id(resolve("sensitive", dataset="mnist1d")) != run_id(named)


@pytest.mark.slow
def test_a_plugin_run_resumes_after_sigterm_bit_identically(
    harness_cli: HarnessCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from test_resume import (
        STEPS_PER_EPOCH,
        WAIT_LIMIT_S,
        assert_identical_runs,
        command,
        steps_logged,
        wait_until,
    )

    method = "sensitive_gmp:SensitiveGMP"
    monkeypatch.syspath_prepend(str(EXAMPLE))
    reference = harness_cli.invoke(*command(harness_cli, method, tmp_path / "reference"))
    assert reference.exit_code == 0, reference.stderr
    argv = command(harness_cli, method, harness_cli.runs_dir)
    run_dir = harness_cli.runs_dir / "default" / Path(reference.last_line).name
    environment = {"PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT), os.environ.get("PYTHONPATH", "")])}

    process = harness_cli.spawn(*argv, env=environment)
    wait_until(lambda: max(steps_logged(run_dir), default=0) >= STEPS_PER_EPOCH + 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=WAIT_LIMIT_S)
    assert process.returncode == 3, stderr
    rerun = harness_cli.run(*argv, env=environment)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.last_line == str(run_dir)
    assert_identical_runs(harness_cli.files(run_dir), harness_cli.files(Path(reference.last_line)))


def test_a_sweep_plans_a_plugin_method_like_a_built_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harness.launch.sweep_file import load_sweep
    from harness.launch.sweep_plan import plan_jobs

    monkeypatch.syspath_prepend(str(EXAMPLE))
    sweep = tmp_path / "plugin.yaml"
    sweep.write_text(
        "name: plugin\nprogram: harness\nmethod: grid\n"
        'command: ["${env}", "${program}", "run", "--set", "sparsity.sensitivity=0.5", "${args_no_boolean_flags}"]\n'
        "parameters:\n"
        "  method: {value: 'sensitive_gmp:SensitiveGMP'}\n"
        "  dataset: {value: mnist1d}\n"
        "  final_sparsity: {values: [0.9, 0.95]}\n"
    )
    jobs = plan_jobs(load_sweep(sweep), runs_dir=tmp_path / "runs")
    names = [job.run_dir.name for job in jobs]
    expected = [
        run_id(
            resolve(
                SENSITIVE, dataset="mnist1d", overrides={"sparsity": {"sensitivity": 0.5, "sparsity": value}}
            )
        )
        for value in (0.9, 0.95)
    ]
    assert sorted(names) == sorted(expected) and len(set(names)) == 2
    assert all(name.startswith("sensitive_gmp-SensitiveGMP-resnet20-mnist1d-s0-") for name in names)
