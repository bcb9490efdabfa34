"""Best-validation selection compares models at the run's final density only."""

from __future__ import annotations

from conftest import HarnessCli


def test_a_gradual_methods_best_epoch_is_one_at_its_final_sparsity(harness_cli: HarnessCli):
    # 6 epochs, pruning over the first half: epochs 1 and 2 end denser than the final 2%.
    argv = ["run", "gmp", *harness_cli.mnist1d(epochs=6), "--sparsity", "0.98", "--update-frequency", "3"]
    result = harness_cli.invoke(*argv)
    assert result.exit_code == 0, result.stderr
    files = harness_cli.files(result.last_line)
    epochs = files.lines("epoch")
    assert [line["epoch"] for line in epochs] == [1, 2, 3, 4, 5, 6]
    eligible = [line for line in epochs if line["epoch"] >= 3]
    best = max(eligible, key=lambda line: line["val/acc"])  # first of equals, as the selection keeps
    summary = files.summary
    assert summary["best_val_epoch"] == best["epoch"]
    assert summary["best_val_acc"] == best["val/acc"]
    assert summary["test_acc_at_best_val"] == best["test/acc"]
    # The last pruning event is at t_e, the end of epoch 3 (9 steps per epoch): epochs 1 and 2 were denser.
    updates = files.lines("mask_update")
    assert updates[-1]["step"] == 27 and updates[-1]["density"] < updates[-2]["density"]
