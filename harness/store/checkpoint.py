"""Atomic checkpoints and the RNG state needed for exact resume.

A checkpoint is written to a temporary file in the same directory, flushed, fsynced and renamed over
the target, so a crash or a full disk at any instant leaves the previous file intact. Before `last.pt`
is replaced, the old one is renamed to `prev.pt`: at every instant at least one complete checkpoint
exists, and `latest_checkpoint` finds it. Kept epochs (`epoch_NNNN.pt`) are hard links to the file that
was `last.pt` at that epoch: no copy, and safe because checkpoint files are never modified in place.

Everything stored is loadable with `torch.load(..., weights_only=True)`: tensors, numbers, strings,
lists and dicts only (no numpy arrays, no pickled objects).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import UserError
from harness.store import rundir

logger = logging.getLogger(__name__)


def previous_path(path: Path) -> Path:
    """Where `save_checkpoint` keeps the file it replaces: `last.pt` -> `prev.pt`, `x.pt` -> `x.prev.pt`."""
    if path.name == rundir.LAST_CHECKPOINT:
        return path.with_name(rundir.PREVIOUS_CHECKPOINT)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


# ---------------------------------------------------------------------------------------------------------
# Atomic files (kept here as names too: callers and tests have used them from this module)


# ---------------------------------------------------------------------------------------------------------
# Save, keep, load


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically; an existing file at `path` is first kept as `previous_path(path)`."""
    path = Path(path)
    # Serialise first: a failing torch.save (unpicklable state, full disk) must not have moved last.pt away.
    temporary = rundir.write_durably(path, lambda handle: torch.save(state, handle))
    try:
        if path.exists():
            # A crash between these two renames leaves prev.pt and no last.pt; latest_checkpoint handles it.
            os.replace(path, previous_path(path))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    rundir.fsync_directory(path.parent)


def keep_copy(path: Path, epoch: int) -> Path:
    """Keep the checkpoint at `path` for good as `epoch_NNNN.pt` beside it (a hard link, or a copy)."""
    path = Path(path)
    target = path.with_name(rundir.epoch_checkpoint_name(epoch))
    temporary = rundir.temporary_path(target)
    temporary.unlink(missing_ok=True)
    try:
        os.link(path, temporary)
    except OSError as error:
        # Some filesystems (FAT, some network mounts) have no hard links.
        logger.debug("hard link %s -> %s failed (%s); copying", path, temporary, error)
        try:
            shutil.copyfile(path, temporary)
        except OSError as copy_error:
            temporary.unlink(missing_ok=True)
            if rundir.no_space(copy_error) is not None:
                raise rundir.storage_full(target) from None
            raise
    rundir.replace_durably(temporary, target)
    return target


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state dict saved at `path`, tensors on the CPU. UserError naming the path if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    # torch.load does not check the zip CRCs: a flipped byte in a tensor would load silently.
    if not is_complete(path):
        raise UserError(f"{path}: checkpoint is truncated or corrupt (zip integrity check failed)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unpickling failed"
        raise UserError(f"{path}: checkpoint cannot be loaded with weights_only=True: {reason}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: checkpoint is unreadable: {reason}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: checkpoint holds a {type(state).__name__}, expected a dict")
    return state


def is_complete(path: Path) -> bool:
    """Cheap integrity check without unpickling: the zip container is whole and every member's CRC matches."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def complete_checkpoint(run_dir: Path) -> tuple[Path | None, list[Path]]:
    """(`checkpoints/last.pt` if complete, else `prev.pt` if that is, else None; the damaged ones passed over).

    Silent: what a damaged checkpoint means differs by reader (training resumes or restarts, export refuses).
    """
    directory = rundir.checkpoint_dir(run_dir)
    damaged: list[Path] = []
    for name in (rundir.LAST_CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):
        candidate = directory / name
        if not candidate.exists():
            continue
        if is_complete(candidate):
            return candidate, damaged
        damaged.append(candidate)
    return None, damaged


def latest_checkpoint(run_dir: Path) -> Path | None:
    """`checkpoints/last.pt` if it is complete, else `checkpoints/prev.pt` if that is, else None.

    One warning when a damaged checkpoint is passed over, saying what the run does instead: resume from
    the previous checkpoint, or (both damaged) restart from scratch, so a restart is not taken for a resume.
    """
    found, damaged = complete_checkpoint(run_dir)
    if found is not None:
        if damaged:
            logger.warning(
                "%s is incomplete or corrupt (interrupted write?); resuming from %s instead",
                damaged[0],
                found,
            )
        return found
    if damaged:
        logger.warning(
            "%s: %s %s incomplete or corrupt (zip integrity check failed); the run restarts from scratch "
            "(step 0), it does not resume",
            rundir.checkpoint_dir(run_dir),
            " and ".join(path.name for path in damaged),
            "are" if len(damaged) > 1 else "is",
        )
    return None


IDENTITY_KEYS = ("run_id", "config_hash")


def check_identity(
    path: Path, state: dict[str, Any], run_id: str, config_hash: str, *, use: str = "resume from it"
) -> None:
    """UserError naming both runs unless the checkpoint at `path` was written by this run (`use` says
    what is refused: a resume, an export).

    Checkpoints written before they carried their identity are accepted: they cannot be checked.
    """
    theirs = state.get("run_id"), state.get("config_hash")
    if theirs == (None, None):
        logger.info(
            "%s carries no run id (an older harness wrote it); using it without the identity check", path
        )
        return
    if theirs != (run_id, config_hash):
        raise UserError(
            f"{path}: checkpoint of run {theirs[0]} (config hash {str(theirs[1])[:10]}), not of this run "
            f"{run_id} (config hash {config_hash[:10]}); refusing to {use}: move it out of the run "
            "directory"
        )


# ---------------------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict[str, Any]:
    """Every global generator a training step can draw from, as tensors, ints, floats and strings."""
    numpy_kind, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(numpy_kind),
            # uint32 words; int64 holds them exactly and is a dtype every torch build serialises.
            "keys": torch.from_numpy(np.asarray(numpy_keys, dtype=np.int64)),
            "position": int(numpy_position),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "python": {
            "version": int(python_version),
            "internal": torch.tensor(python_internal, dtype=torch.int64),
            "gauss_next": python_gauss,  # float or None
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what `capture_rng_state` returned (after a round trip through `torch.save`/`load_checkpoint`)."""
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            int(numpy_state["position"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )
    python_state = state["python"]
    internal = tuple(int(word) for word in python_state["internal"].tolist())
    random.setstate((int(python_state["version"]), internal, python_state["gauss_next"]))
    _restore_cuda(state.get("cuda"))


def _restore_cuda(cuda_states: list[torch.Tensor] | None) -> None:
    if cuda_states is None or not torch.cuda.is_available():
        if cuda_states is not None:
            logger.warning("checkpoint has CUDA RNG states but CUDA is not available; they are not restored")
        return
    available = torch.cuda.device_count()
    if len(cuda_states) != available:
        logger.warning(
            "checkpoint has CUDA RNG states for %d devices, this machine has %d; restoring the first %d",
            len(cuda_states),
            available,
            min(len(cuda_states), available),
        )
    for index, device_state in enumerate(cuda_states[:available]):
        torch.cuda.set_rng_state(device_state.to("cpu", torch.uint8), device=index)
