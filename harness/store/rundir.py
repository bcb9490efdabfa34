"""The run directory: the one module that knows its layout, its file names, how to write and how to read it.

    <runs_dir>/<group>/<run_id>/
        config.yaml            CONFIG_FILE       the resolved config
        status                 STATUS_FILE       running | completed | failed (written last)
        metrics.jsonl          METRICS_FILE      one JSON object per line
        summary.json           SUMMARY_FILE      the final numbers
        masks/step_N.npz       MASKS_DIR         bit-packed mask snapshots (harness.store.snapshots)
        checkpoints/last.pt    CHECKPOINT_DIR    and prev.pt, epoch_NNNN.pt (harness.store.checkpoint)
    <runs_dir>/<group>/.<run_id>.lock            the run lock (beside the directory, never deleted)

Writes: every whole file is written to a temporary file beside it (`.<name>.<pid>.tmp`), fsynced, renamed
over the target, and the directory fsynced, so a reader sees the old file or the new one, never a mix. A
full disk becomes one `StorageFullError` naming the path.

Reads survive damage: a file that cannot be what the contract says (invalid YAML, a list where a mapping
belongs, garbage or truncated JSON, a binary status, a non-UTF-8 metrics line, a truncated snapshot) is a
`DamagedFile` naming it, which every reader turns into one warning and "this run is damaged". A torn last
metrics line is not damage: it is what a writer killed mid-line leaves, and is ignored.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import yaml

from harness.errors import UserError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
STATUS_FILE = "status"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MASKS_DIR = "masks"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "prev.pt"
SNAPSHOT_PREFIX = "step_"
SNAPSHOT_SUFFIX = ".npz"
TEMPORARY_SUFFIX = ".tmp"

STATUSES: tuple[str, ...] = ("running", "completed", "failed")
# What readers list for a run with a file that cannot be read; never written to a status file.
DAMAGED = "damaged"
# A completed run's summary without these is damaged: every reader of results groups or labels by them.
SUMMARY_REQUIRED_KEYS = ("run_id", "method", "arch", "dataset", "seed")

# The C loader where PyYAML has one: configs of hundreds of runs are read. Safe either way.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DamagedFile(UserError):
    """A run-store file that is not what the contract says; `path` names it, `reason` says how."""

    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        super().__init__(f"{path}{'' if line is None else f':{line}'}: {reason}")
        self.path = Path(path)
        self.reason = reason
        self.line = line


class StorageFullError(Exception):
    """A write failed because its file system is full (or over quota)."""


def config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def status_path(run_dir: Path) -> Path:
    return Path(run_dir) / STATUS_FILE


def metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def summary_path(run_dir: Path) -> Path:
    return Path(run_dir) / SUMMARY_FILE


def masks_dir(run_dir: Path) -> Path:
    return Path(run_dir) / MASKS_DIR


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def epoch_checkpoint_name(epoch: int) -> str:
    """A checkpoint kept for good at the end of `epoch` (`run.keep_checkpoints`)."""
    return f"epoch_{epoch:04d}.pt"


def lock_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def is_run_dir(directory: Path) -> bool:
    return config_path(directory).is_file()


def snapshot_name(step: int) -> str:
    return f"{SNAPSHOT_PREFIX}{step:09d}{SNAPSHOT_SUFFIX}"


def snapshot_step(path: Path) -> int:
    """The optimizer step a snapshot file was taken at (from its name)."""
    return int(Path(path).name.removeprefix(SNAPSHOT_PREFIX).removesuffix(SNAPSHOT_SUFFIX))


def mask_snapshots(run_dir: Path) -> list[Path]:
    """The run's mask snapshot files in step order (empty if it wrote none).

    A file whose name holds no step (`step_x.npz`) was not written by the harness: warned about, left out.
    """
    directory = masks_dir(run_dir)
    if not directory.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for path in directory.glob(f"{SNAPSHOT_PREFIX}*{SNAPSHOT_SUFFIX}"):
        try:
            found.append((snapshot_step(path), path))
        except ValueError:
            logger.warning("%s: not a mask snapshot name (step_NNNNNNNNN.npz); ignored", path)
    return [path for _, path in sorted(found)]


# ---------------------------------------------------------------------------------------------------------
# Atomic writes


def temporary_path(path: Path) -> Path:
    # The process id keeps two writers (e.g. ranks sharing a directory by mistake) off each other's file.
    return path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")


def no_space(error: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind `error`, if any (torch.save wraps it in a RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return current
        current = current.__cause__ or current.__context__
    return None


def storage_full(path: Path) -> StorageFullError:
    return StorageFullError(
        f"{path}: no space left on device; the run stopped (its last checkpoint is intact): free space "
        "and run the same command to resume"
    )


def write_durably(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """A fsynced temporary file beside `path` holding what `write` wrote; removed again if anything fails."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if no_space(error) is not None:
            raise storage_full(path) from None
        raise
    return temporary


def replace_durably(temporary: Path, path: Path) -> None:
    """Rename `temporary` over `path` and make the rename itself durable."""
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(handle)` on a temporary file beside `path`, make it durable, then rename it to `path`.

    Readers see either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    replace_durably(write_durably(path, write), path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def fsync_directory(directory: Path) -> None:
    # Makes a rename durable; without it a power loss can bring back the old directory entry.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def append_line(path: Path, line: bytes) -> None:
    """Append one whole line with one write() on an O_APPEND descriptor.

    No user-space buffer can split it, so a reader sees the line whole or not at all, and a crash can
    tear at most the last line.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(descriptor, line)
            while written < len(line):  # short writes do not happen on local disks, but are legal
                written += os.write(descriptor, line[written:])
        finally:
            os.close(descriptor)
    except OSError as error:
        if no_space(error) is not None:
            raise storage_full(path) from None
        raise


def write_status(run_dir: Path, status: str) -> None:
    """The status word, atomically. On a full disk, which a failing run often stops on, the word is
    overwritten in place instead: that needs no new block, and a torn word reads as damaged, which
    resumes like `failed` does."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    path = status_path(run_dir)
    try:
        atomic_write_text(path, status + "\n")
    except StorageFullError:
        if not path.is_file():
            raise
        with open(path, "r+b") as handle:
            handle.write((status + "\n").encode())
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------------------
# Symlinks


def refuse_planted_symlinks(run_dir: Path) -> None:
    """UserError naming the first symlink inside the run directory where the harness writes.

    The harness creates no symlinks there, so one is someone else's, and writing through it would put a
    run's files outside its directory. (W&B's own links live under `wandb/`, which is not looked into.)
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for directory in (run_dir, masks_dir(run_dir), checkpoint_dir(run_dir)):
        if directory != run_dir and (directory.is_symlink() or not directory.is_dir()):
            continue
        for entry in sorted(directory.iterdir()):
            if entry.is_symlink():
                raise UserError(
                    f"{entry}: is a symlink (to {os.readlink(entry)}); the harness never writes through a "
                    "symlink it did not create inside a run directory: remove it or move the run"
                )


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete what writers killed inside an atomic write left (`.name.pid.tmp`); returns what went.

    Only for the process that holds the run lock: no other writer of this run can be alive then.
    """
    removed = []
    for directory in (Path(run_dir), masks_dir(run_dir), checkpoint_dir(run_dir)):
        if directory.is_dir() and not directory.is_symlink():
            for path in directory.glob(f"*{TEMPORARY_SUFFIX}"):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), run_dir)
    return removed


# ---------------------------------------------------------------------------------------------------------
# Tolerant reads


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DamagedFile(path, "not UTF-8 text") from None
    except IsADirectoryError:
        raise DamagedFile(path, "is a directory, not a file") from None


def read_status(run_dir: Path) -> str | None:
    """`running`, `completed`, `failed`, or None when there is no status file. DamagedFile otherwise."""
    path = status_path(run_dir)
    if not path.exists():
        return None
    status = _read_text(path).strip()
    if status not in STATUSES:
        shown = status if len(status) <= 20 and status.isprintable() else f"{status[:20]!r}"
        raise DamagedFile(path, f"status {shown!r} is none of {', '.join(STATUSES)}")
    return status


def completion_damage(run_dir: Path) -> DamagedFile | None:
    """What keeps a run that may have finished from counting as completed: a damaged status, or a
    `completed` status with a damaged summary or config. None when there is no such damage."""
    try:
        if read_status(run_dir) == "completed":
            read_summary(run_dir)
            if config_path(run_dir).exists():
                read_config(run_dir)
    except DamagedFile as damage:
        return damage
    return None


def is_completed(run_dir: Path) -> bool:
    """Whether the run is completed: status `completed` and a readable summary (damage counts as not)."""
    return read_status_or_damaged(run_dir) == "completed" and completion_damage(run_dir) is None


def read_status_or_damaged(run_dir: Path) -> str | None:
    """`read_status`, with DAMAGED for a damaged status file."""
    try:
        return read_status(run_dir)
    except DamagedFile:
        return DAMAGED


def finite_or_none(value: Any) -> Any:
    """Non-finite numbers (NaN, inf, which Python's json reads) are missing values, nested included."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value


def read_summary(run_dir: Path, *, required: Iterable[str] = SUMMARY_REQUIRED_KEYS) -> dict[str, Any]:
    """summary.json as a dict ({} if absent), non-finite numbers as None. DamagedFile when it is not a JSON
    object or lacks a `required` key."""
    path = summary_path(run_dir)
    if not path.exists():
        return {}
    text = _read_text(path)
    try:
        summary = json.loads(text)
    except ValueError as error:
        raise DamagedFile(path, f"not valid JSON ({error})") from None
    if not isinstance(summary, dict):
        raise DamagedFile(path, f"holds a JSON {type(summary).__name__}, expected an object")
    missing = [key for key in required if key not in summary]
    if missing:
        raise DamagedFile(path, f"lacks the key(s) {', '.join(missing)}")
    return finite_or_none(summary)


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml as a nested dict, read with the safe loader (no tags that build objects). DamagedFile
    when it is not YAML or not a mapping."""
    return read_config_file(config_path(run_dir))


def read_config_file(path: Path) -> dict[str, Any]:
    """`read_config` for a config file anywhere (`harness run --config FILE`), sections as mappings."""
    text = _read_text(path)
    try:
        config = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DamagedFile(path, f"not valid YAML for the safe loader ({first})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise DamagedFile(path, f"holds a YAML {type(config).__name__}, expected a mapping")
    for section, value in config.items():
        if value is not None and not isinstance(value, dict):
            raise DamagedFile(path, f"section {section!r} is a {type(value).__name__}, expected a mapping")
    return config


def read_metric_lines(path: Path) -> list[tuple[bytes, dict[str, Any]]]:
    """(raw line, parsed record) pairs of a metrics.jsonl ([] if absent).

    A torn last line (no newline, or not a whole JSON object) is ignored with a warning; any other line
    that is not a UTF-8 JSON object with an integer `step` is a DamagedFile naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw_lines = path.read_bytes().splitlines(keepends=True)
    pairs = []
    for number, raw in enumerate(raw_lines, start=1):
        record: Any = None
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "not UTF-8 text"
        except ValueError:
            problem = "not a JSON object line"
        else:
            problem = "" if isinstance(record, dict) else "not a JSON object line"
        if not problem and (isinstance(record.get("step"), bool) or not isinstance(record.get("step"), int)):
            problem = "a line without an integer step"
        if not problem and raw.endswith(b"\n"):
            pairs.append((raw, record))
        elif number == len(raw_lines):
            # A writer killed mid-line leaves it; so can a full disk (part of the bytes, then ENOSPC).
            logger.warning("%s: ignoring an incomplete last line (the writer was interrupted)", path)
        else:
            raise DamagedFile(path, f"{problem or 'an incomplete line'}; the metrics file is damaged", number)
    return pairs


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order (see `read_metric_lines`)."""
    return [record for _, record in read_metric_lines(path)]


def check_snapshot(path: Path) -> None:
    """DamagedFile unless `path` is a whole zip archive (a mask snapshot cut short by a crash or a copy)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        raise DamagedFile(path, f"mask snapshot is truncated or not a zip archive ({error})") from None
    if bad is not None:
        raise DamagedFile(path, f"mask snapshot member {bad} fails its CRC check")
