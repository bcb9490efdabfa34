"""The fast-step options (`run.memory_format`, `run.compile`) and the sparse core on channels_last weights.

On the CPU, which is where these tests run: an explicit channels_last run keeps exact mask counts, masked
weights at exactly zero, working GraNet and RigL updates and a bit-identical mid-epoch resume; the sparse
core selects the same entries from a channels_last weight as from a contiguous one with the same values;
a compiled run resumes mid-epoch bit-identically (an epoch's smaller last batch included); and both options
enter the run id only when set, so every earlier run id is unchanged (tests/test_pinned_run_ids.py).
"""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import HarnessCli, RunFiles
from sparse_helpers import one_thread
from test_resume import assert_identical_runs

from harness.config import Config, dump_yaml, resolve, run_id
from harness.engine import loop
from harness.engine.distributed import dist_info_from_env
from harness.engine.lifecycle import run_training
from harness.engine.loop import Interrupted, build_session
from harness.engine.session import Session
from harness.errors import UserError
from harness.models.build import build_model
from harness.sparse import MaskSet, build_method

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3


def tiny_config(runs_dir: Path, method: str = "granet", width: float = 1.0, **run: Any) -> Config:
    """Synthetic 3x16x16 images, ResNet-20 (at width 1: narrower ones are refused with channels_last on a
    CPU, see test_oneDNN_s_broken_kernel_is_refused): 218 training samples, so each epoch has 6 batches of 32
    and a last one of 26; GraNet prunes and regrows every 4 steps."""
    overrides = {
        "data": {"num_samples": 250},
        "model": {"width": width},
        "optim": {"epochs": EPOCHS},
        "tracking": {"runs_dir": str(runs_dir), "wandb": "disabled", "log_every": 2},
        "run": {"device": "cpu", "threads": 1, **run},
    }
    return resolve(method, dataset="synthetic", overrides=overrides)


def compiled_config(runs_dir: Path, data_dir: Path, *, compile: bool = True) -> Config:
    """MNIST-1D (in memory, 1-D convolutions, which compile fast and which oneDNN's channels_last bug does not
    touch), ResNet-20 at width 0.25: 270 training samples, 8 batches of 32 and a last one of 14 per epoch."""
    overrides = {
        "data": {"data_dir": str(data_dir), "num_samples": 400, "val_size": 50},
        "model": {"width": 0.25},
        "optim": {"epochs": EPOCHS, "batch_size": 32},
        "sparsity": {"update_frequency": 4},
        "tracking": {"runs_dir": str(runs_dir), "wandb": "disabled", "log_every": 2},
        "run": {"device": "cpu", "threads": 1, "compile": compile},
    }
    return resolve("granet", dataset="mnist1d", overrides=overrides)


def interrupted_and_resumed(
    config: Config, stop_after_step: int, monkeypatch: pytest.MonkeyPatch, *, fresh_compiler: bool = False
) -> RunFiles:
    """The run stopped by SIGTERM right after optimizer step `stop_after_step` (it checkpoints there), then
    resumed by the same call."""
    step = loop.train_step

    def signalling_step(session: Session, *args: Any) -> loop.Step:
        result = step(session, *args)
        if session.step == stop_after_step:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop stops after this step and checkpoints
        return result

    with monkeypatch.context() as patch:
        patch.setattr(loop, "train_step", signalling_step)
        with pytest.raises(Interrupted, match=f"stopped at step {stop_after_step}$"):
            run_training(config, dist_info_from_env("cpu"))
    if fresh_compiler:
        # What a resume in a new process meets: no graph compiled yet.
        torch._dynamo.reset()
    return RunFiles(run_training(config, dist_info_from_env("cpu")).run_dir)


def masks_zero_their_weights(files: RunFiles) -> None:
    state = files.checkpoint()
    masks = state["sparsifier"]["masks"]
    assert masks, "the checkpoint holds no masks"
    for name, mask in masks.items():
        assert not mask.all(), name  # sparse layers: the check below is not vacuous
        assert torch.all(state["model"][name][~mask] == 0), name


# ---------------------------------------------------------------------------------------------------------
# Run ids and validation


def test_the_options_enter_the_run_id_only_when_set(tmp_path: Path) -> None:
    eager = tiny_config(tmp_path)
    variants = {
        "compile": tiny_config(tmp_path, compile=True),
        "contiguous": tiny_config(tmp_path, memory_format="contiguous"),
        "channels_last": tiny_config(tmp_path, memory_format="channels_last"),
        "both": tiny_config(tmp_path, compile=True, memory_format="channels_last"),
    }
    ids = {name: run_id(config) for name, config in variants.items()}
    assert len({run_id(eager), *ids.values()}) == 5
    # Spelling out the defaults is the same run: the late fields at their legacy values leave the hash.
    assert run_id(tiny_config(tmp_path, compile=False, memory_format="auto")) == run_id(eager)
    text = dump_yaml(variants["both"])
    assert "  compile: true\n  memory_format: channels_last\n" in text


def test_channels_last_for_a_1d_dataset_is_a_one_line_error_naming_the_field(harness_cli: HarnessCli) -> None:
    result = harness_cli.invoke(
        "run", "granet", *harness_cli.mnist1d(), "--set", "run.memory_format=channels_last"
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "error: run.memory_format: channels_last is a layout of 2-D images, and mnist1d gives 1-D inputs; "
        "use auto or contiguous\n"
    )
    assert not harness_cli.runs_dir.exists()


def test_channels_last_for_a_1d_plugin_dataset_is_refused_before_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "plugins"))
    overrides = {
        "data": {"val_size": 100},
        "tracking": {"runs_dir": str(tmp_path / "runs"), "wandb": "disabled"},
        "run": {"device": "cpu", "memory_format": "channels_last"},
    }
    config = resolve("granet", dataset="my_data:waveforms", overrides=overrides)  # its shape is unknown here
    with pytest.raises(UserError) as raised:
        run_training(config, dist_info_from_env("cpu"))
    assert str(raised.value) == (
        "run.memory_format: channels_last is a layout of 2-D images, and my_data:waveforms gives 1-D inputs; "
        "use auto or contiguous"
    )
    assert not (tmp_path / "runs").exists()


def test_auto_is_contiguous_on_the_cpu_and_channels_last_converts_weights_and_batches(tmp_path: Path) -> None:
    with one_thread():
        auto = build_session(tiny_config(tmp_path), dist_info_from_env("cpu"))
        channels_last = build_session(
            tiny_config(tmp_path, memory_format="channels_last"), dist_info_from_env("cpu")
        )
    assert auto.input_format is torch.preserve_format
    assert all(weight.is_contiguous() for weight in auto.masks.weights)
    assert channels_last.input_format is torch.channels_last
    convolutions = [weight for weight in channels_last.masks.weights if weight.dim() == 4]
    assert convolutions and all(
        weight.is_contiguous(memory_format=torch.channels_last) for weight in convolutions
    )
    # (A 1x1 kernel's two layouts have the same strides; every 3x3 one must really have changed.)
    assert all(not weight.is_contiguous() for weight in convolutions if weight.shape[-1] > 1)
    # The masks follow their weights' layout, so the per-step multiplies stay fused.
    assert all(
        mask.stride() == weight.stride()
        for mask, weight in zip(channels_last.masks.masks, channels_last.masks.weights, strict=True)
    )
    # Checkpoints and evaluation see the plain module: no compiled wrapper's prefixes.
    assert list(channels_last.model.state_dict()) == list(auto.model.state_dict())


@pytest.mark.parametrize(
    ("run", "field"),
    [({"memory_format": "channels_last"}, "run.memory_format"), ({"compile": True}, "run.compile")],
)
def test_oneDNN_s_broken_kernel_is_refused_before_any_directory(
    tmp_path: Path, run: dict[str, Any], field: str
) -> None:
    """At width 0.25 ResNet-20's strided 1x1 shortcuts have 4 input channels: oneDNN's channels_last weight
    gradient of those is wrong or aborts the process (harness.engine.loop.refuse_broken_cpu_kernels)."""
    with pytest.raises(UserError) as raised:
        run_training(tiny_config(tmp_path / "runs", width=0.25, **run), dist_info_from_env("cpu"))
    message = str(raised.value)
    assert message.startswith(f"{field}: ") and "oneDNN issue #6035" in message and "\n" not in message
    assert "stages.1.0.shortcut.0 has 4;" in message
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------------
# The sparse core on channels_last weights


def twin_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A ResNet-20 (CIFAR shape, width 0.25) with dense gradients, and its copy in channels_last."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, input_shape=(3, 16, 16), width=0.25)
    inputs, targets = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for original, converted in zip(model.parameters(), twin.parameters(), strict=True):
        converted.grad = torch.empty_like(converted).copy_(original.grad)  # in the weight's layout
    assert not twin.stem[0].weight.is_contiguous()
    return model, twin


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("granet", {"sparsity": 0.9, "init_sparsity": 0.5, "update_frequency": 1, "prune_end": 0.5}),
        ("rigl", {"sparsity": 0.9, "update_frequency": 1}),
    ],
)
def test_a_mask_update_selects_the_same_entries_from_channels_last_weights(
    method: str, settings: dict[str, Any]
) -> None:
    """Same values, two layouts: every mask, weight and momentum buffer equal entry for entry (a `view` that
    read a channels_last tensor's memory order would select other entries, or fail)."""
    with one_thread():
        results = []
        for model in twin_models():
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            optimizer.step()  # momentum buffers exist, in each weight's layout
            masks = MaskSet.for_model(model)
            sparsity = build_method(method, masks, optimizer, settings, total_steps=10)
            before = masks.active_counts()
            update = sparsity.step()  # applies the masks, then step 1 is an update step
            assert update is not None
            results.append((masks, optimizer, update, before))
    (plain, plain_optimizer, plain_update, plain_before), (last, last_optimizer, last_update, last_before) = (
        results
    )
    assert plain_before == last_before
    assert plain_update.record() == last_update.record()
    assert sum(layer.grown for layer in last_update.layers.values()) > 0  # it regrew something
    for name, a, b in zip(plain.names, plain.masks, last.masks, strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(plain.weights, last.weights, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain_optimizer.state.values(), last_optimizer.state.values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


# ---------------------------------------------------------------------------------------------------------
# Whole runs


def test_a_channels_last_run_keeps_exact_counts_zero_weights_and_resumes_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with one_thread():
        contiguous = RunFiles(
            run_training(tiny_config(tmp_path / "contiguous"), dist_info_from_env("cpu")).run_dir
        )
        reference = RunFiles(
            run_training(
                tiny_config(tmp_path / "reference", memory_format="channels_last"), dist_info_from_env("cpu")
            ).run_dir
        )
        resumed = interrupted_and_resumed(
            tiny_config(tmp_path / "resumed", memory_format="channels_last"), 9, monkeypatch
        )
    assert_identical_runs(resumed, reference)
    updates, expected = reference.lines("mask_update"), contiguous.lines("mask_update")
    assert (
        [line["step"] for line in updates] == [line["step"] for line in expected] == [0, 4, 8, 10, 12, 16, 20]
    )

    def active(line: dict[str, Any]) -> float:
        return sum(value for key, value in line.items() if key.endswith("/density"))

    # The schedule decides the counts, whatever the layout: the same global density at every event.
    assert [line["density"] for line in updates] == [line["density"] for line in expected]
    assert [line["target_density"] for line in updates] == [line["target_density"] for line in expected]
    assert any(line[key] > 0 for line in updates for key in line if key.endswith("/grown"))
    assert active(updates[-1]) > 0
    masks_zero_their_weights(reference)
    # The layout changes the CPU kernels, hence the numbers: another run, as its id says.
    assert reference.path.name != contiguous.path.name


@pytest.mark.slow  # ~90 s with an empty inductor cache (a fresh machine), ~15 s once it holds these graphs
def test_a_compiled_run_resumes_mid_epoch_bit_identically(
    tmp_path: Path, mnist1d_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted right before the last, smaller batch of epoch 2 and resumed with no graph compiled: the
    resumed process meets the small batch first. With dynamo's default (automatic dynamic shapes) it would
    then compile a shape-generic graph for the full batches of epoch 3, which rounds differently from the
    static one the uninterrupted run uses (measured: every gradient differs); one static graph per shape
    keeps them identical."""
    with one_thread():
        reference = RunFiles(
            run_training(
                compiled_config(tmp_path / "reference", mnist1d_dir), dist_info_from_env("cpu")
            ).run_dir
        )
        resumed = interrupted_and_resumed(
            compiled_config(tmp_path / "resumed", mnist1d_dir), 17, monkeypatch, fresh_compiler=True
        )
        eager = run_training(
            compiled_config(tmp_path / "eager", mnist1d_dir, compile=False), dist_info_from_env("cpu")
        )
    assert_identical_runs(resumed, reference)
    assert [line["step"] for line in reference.lines("epoch")] == [9, 18, 27]
    assert any(
        line[key] > 0 for line in reference.lines("mask_update") for key in line if key.endswith("/grown")
    )
    masks_zero_their_weights(reference)
    # Checkpoints hold the plain module's names, never the compiled wrapper's `_orig_mod.` prefix.
    assert list(reference.checkpoint()["model"]) == list(RunFiles(eager.run_dir).checkpoint()["model"])
    # The compiled step is its own run, and rounds differently from the eager one.
    assert eager.run_dir.name != reference.path.name
