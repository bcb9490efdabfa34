"""The five new methods train through `harness run` on MNIST-1D, their scoring passes are counted in
training FLOPs, and a method defined in a test (one class, one registry line) runs through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HarnessCli
from torch import Tensor

from harness.sparse import METHODS
from harness.sparse.methods import GradualMagnitude

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


def test_a_method_defined_in_a_test_runs_through_harness_run_unchanged(
    harness_cli: HarnessCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(METHODS, FirstPositions.name, FirstPositions)  # its registry line
    files = harness_cli.files(run(harness_cli, "first-positions"))
    assert files.status.strip() == "completed"
    assert files.summary["method"] == "first-positions"
    final = files.lines("mask_update")[-1]
    names = [key.split("/")[1] for key in final if key.startswith("layers/") and key.endswith("/density")]
    masks = files.snapshots()[final["step"]]
    flat = np.concatenate([masks[name].reshape(-1) for name in names])
    keep = round(0.1 * flat.size)
    # Exactly the first `keep` positions of the network, in mask-set order.
    assert flat[:keep].all() and not flat[keep:].any()
