"""Read (and relocate) the W&B offline runs a run directory carries, without a server.

W&B writes an offline run as `<run-dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb`: a LevelDB-style log
(32 KiB blocks; each chunk has a 7-byte header: CRC-32 of type byte + payload, length, type) of
`wandb.proto.wandb_internal_pb2.Record` messages, after a 7-byte file header. `wandb sync` replays it.
Records are decoded with W&B's own protobuf definitions; only the framing is read here, because the pinned
wandb (0.31) ships no Python reader for it.

The mirror logs mask artifacts by reference to the run store's `masks/` files (no copy in W&B's global
staging folder), so everything sync uploads lies inside the run directory. Artifact manifests record
absolute paths, though: after the run directory is copied to another place, `relocate` rewrites them to
where the directory is now, so that `wandb sync` finds the payloads.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.store import rundir

logger = logging.getLogger(__name__)

_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# The artifact metadata key that holds a payload's path inside the run directory (see WandbMirror).
RUN_FILE_KEY = "run_file"


def _checksum(kind: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF


@dataclass
class LogScan:
    """What the framing of a `.wandb` log holds: its header, every record that reads whole, and where
    reading stopped early (`damaged_at`, a byte offset; None when the whole file was read)."""

    path: Path
    header: bytes
    records: list[bytes]
    size: int
    damaged_at: int | None = None
    why: str = ""


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a W&B transaction log (.wandb)") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the W&B log ({error.strerror})") from None


def scan_log(path: Path) -> LogScan:
    """Read a `.wandb` log's framing up to its end or its first damaged chunk; never warns (callers say what
    the damage means for them). UserError when the file is not a W&B log at all."""
    data = _read_bytes(path)
    header = data[: _FILE_HEADER.size]
    if len(header) < _FILE_HEADER.size or _FILE_HEADER.unpack(header)[0] != b":W&B":
        raise UserError(f"{path}: not a W&B transaction log (.wandb)")
    scan = LogScan(Path(path), header, [], len(data))
    pending: bytes | None = None
    pending_at = 0
    position = _FILE_HEADER.size
    while position + _CHUNK_HEADER.size <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _CHUNK_HEADER.size:
            position += left  # the writer pads a block's tail that cannot hold a chunk header
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, position)
        start = position + _CHUNK_HEADER.size
        payload = data[start : start + length]
        if kind == 0 and length == 0:
            position += left  # zero padding to the end of the block
            continue
        if len(payload) < length or _checksum(kind, payload) != crc or kind not in (1, 2, 3, 4):
            scan.damaged_at, scan.why = position, "damaged record"
            return scan
        position = start + length
        if kind == _FULL:
            scan.records.append(payload)
        elif kind == _FIRST:
            pending, pending_at = payload, position - length - _CHUNK_HEADER.size
        elif pending is not None:
            pending += payload
            if kind == _LAST:
                scan.records.append(pending)
                pending = None
    if pending is not None:
        # A record begun and never ended (a writer killed mid-record): rewriting the log would drop it.
        scan.damaged_at, scan.why = pending_at, "unfinished record"
    return scan


def read_log(path: Path) -> tuple[bytes, list[bytes]]:
    """(file header, record payloads) of a `.wandb` log. A damaged chunk ends the log with one warning."""
    scan = scan_log(path)
    if scan.damaged_at is not None:
        logger.warning("%s: %s at byte %d; reading stops there", path, scan.why, scan.damaged_at)
    return scan.header, scan.records


def frame_log(header: bytes, records: list[bytes]) -> bytes:
    """Records framed exactly as W&B frames them (tested: a rewrite without changes is byte-identical)."""
    out = bytearray(header)
    for record in records:
        rest, first = record, True
        while True:
            left = _BLOCK - len(out) % _BLOCK
            if left < _CHUNK_HEADER.size:
                out += bytes(left)
                continue
            room = left - _CHUNK_HEADER.size
            chunk, rest = rest[:room], rest[room:]
            last = not rest
            kind = (_FULL if last else _FIRST) if first else (_LAST if last else _MIDDLE)
            out += _CHUNK_HEADER.pack(_checksum(kind, chunk), len(chunk), kind) + chunk
            first = False
            if last:
                break
    return bytes(out)


def write_log(path: Path, header: bytes, records: list[bytes]) -> None:
    """Replace the log at `path` with `records`, only after the new log, written beside it, reads back as
    exactly these records (a short write or a framing fault never replaces the old log)."""
    data = frame_log(header, records)
    temporary = rundir.write_durably(Path(path), lambda handle: handle.write(data))
    try:
        written = scan_log(temporary)
        if written.damaged_at is not None or written.records != records or written.header != header:
            raise UserError(f"{path}: the rewritten log does not read back whole; the old log is kept")
        rundir.replace_durably(temporary, Path(path))
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@dataclass
class Payload:
    """One file `wandb sync` would upload: its name in W&B and where sync reads it from."""

    artifact: str  # "" for a run file
    name: str
    local_path: Path
    run_file: str | None = None  # the payload's path inside the run directory, when it is a run-store file

    @property
    def exists(self) -> bool:
        return self.local_path.is_file()


@dataclass
class OfflineRun:
    """What one offline-run folder holds, as `wandb sync` would replay it."""

    folder: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history_rows: int = 0
    artifacts: dict[str, list[str]] = field(default_factory=dict)  # name -> aliases, in logged order
    payloads: list[Payload] = field(default_factory=list)


def offline_folders(run_dir: Path) -> list[Path]:
    """The offline-run folders of a run directory (one per process segment: resumes add one)."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*"))


def _log_file(folder: Path) -> Path:
    logs = sorted(folder.glob("*.wandb"))
    if not logs:
        raise UserError(f"{folder}: no .wandb log in this offline-run folder")
    return logs[0]


def _decode(path: Path, index: int, payload: bytes) -> Any:
    """Record number `index` of the log at `path`; UserError naming both when its bytes, though framed with
    a valid CRC, are not a W&B record."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    try:
        record.ParseFromString(payload)
    except DecodeError as error:
        raise UserError(f"{path}: record {index} (CRC valid) is not a W&B record ({error})") from None
    return record


def _records(folder: Path) -> Iterator[Any]:
    path = _log_file(folder)
    for index, payload in enumerate(read_log(path)[1]):
        yield _decode(path, index, payload)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _apply_items(target: dict[str, Any], items: Any) -> None:
    for item in items:
        keys = list(item.nested_key) or [item.key]
        if keys[0].startswith("_"):
            continue  # W&B's own bookkeeping (_wandb, _runtime, _step, _timestamp)
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = _json(item.value_json)


def read_offline_run(folder: Path) -> OfflineRun:
    run = OfflineRun(folder=Path(folder))
    for record in _records(folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run.run_id, run.project, run.group, run.job_type = (
                info.run_id, info.project, info.run_group, info.job_type,
            )  # fmt: skip
            run.tags = list(info.tags)
            _apply_items(run.config, info.config.update)
        elif kind == "config":
            _apply_items(run.config, record.config.update)
        elif kind == "summary":
            _apply_items(run.summary, record.summary.update)
        elif kind == "history":
            run.history_rows += 1
        elif kind == "files":
            for item in record.files.files:
                run.payloads.append(Payload("", item.path, run.folder / "files" / item.path))
        elif kind == "artifact":
            artifact = record.artifact
            run.artifacts.setdefault(artifact.name, []).extend(
                alias for alias in artifact.aliases if alias != "latest"
            )
            metadata = _json(artifact.metadata) if artifact.metadata else {}
            run_file = metadata.get(RUN_FILE_KEY) if isinstance(metadata, dict) else None
            for entry in artifact.manifest.contents:
                if entry.ref:
                    continue  # a reference: sync uploads no payload for it
                run.payloads.append(Payload(artifact.name, entry.path, Path(entry.local_path), run_file))
    return run


def _refuse_loss(scan: LogScan) -> None:
    assert scan.damaged_at is not None
    readable = sum(len(record) for record in scan.records)
    raise UserError(
        f"{scan.path}: {scan.why} at byte {scan.damaged_at} of {scan.size}; rewriting the log would drop "
        f"everything from there on ({scan.size - scan.damaged_at} bytes; {len(scan.records)} records, "
        f"{readable} bytes, read whole before it); nothing changed: --drop-damaged rewrites it without them"
    )


def relocate(run_dir: Path, *, drop_damaged: bool = False) -> int:
    """Point every artifact payload recorded as a run-store file at that file in `run_dir` as it is now.

    Returns how many manifest entries changed. Entries whose file is not in the run directory are left
    as they are (and `inspect` lists them as missing). A log that does not read whole to its end is
    refused before anything is written (a rewrite keeps only what reads whole), unless `drop_damaged`;
    each log is decoded in full before any is rewritten, so a bad record leaves every log as it was.
    """
    run_dir = Path(run_dir).resolve()
    plans: list[tuple[Path, LogScan, list[bytes], int]] = []
    for folder in offline_folders(run_dir):
        path = _log_file(folder)
        scan = scan_log(path)
        if scan.damaged_at is not None:
            if not drop_damaged:
                _refuse_loss(scan)
            logger.warning(
                "%s: %s at byte %d; --drop-damaged: the rewritten log drops the %d bytes from there on",
                path, scan.why, scan.damaged_at, scan.size - scan.damaged_at,
            )  # fmt: skip
        rewritten: list[bytes] = []
        folder_changed = 0
        for index, payload in enumerate(scan.records):
            record = _decode(path, index, payload)
            if record.WhichOneof("record_type") == "artifact":
                metadata = _json(record.artifact.metadata) if record.artifact.metadata else {}
                run_file = metadata.get(RUN_FILE_KEY) if isinstance(metadata, dict) else None
                target = run_dir / run_file if run_file else None
                for entry in record.artifact.manifest.contents:
                    if target is not None and target.is_file() and entry.local_path != str(target):
                        entry.local_path = str(target)
                        folder_changed += 1
                if folder_changed:
                    payload = record.SerializeToString()
            rewritten.append(payload)
        plans.append((path, scan, rewritten, folder_changed))
    changed = 0
    for path, scan, rewritten, folder_changed in plans:
        if folder_changed:
            write_log(path, scan.header, rewritten)
            changed += folder_changed
    return changed


def describe(run_dir: Path) -> str:
    """A plain-text account of a run directory's offline W&B runs: what `wandb sync` would upload."""
    folders = offline_folders(run_dir)
    if not folders:
        raise UserError(f"{run_dir}: no W&B offline run here (expected wandb/offline-run-*)")
    lines: list[str] = []
    for folder in folders:
        run = read_offline_run(folder)
        lines.append(f"{folder}")
        lines.append(
            f"  run {run.run_id}  project {run.project}  group {run.group}  job_type {run.job_type}  "
            f"tags {', '.join(run.tags) or '-'}"
        )
        lines.append(f"  config sections: {', '.join(sorted(run.config)) or '-'}")
        lines.append(f"  history rows: {run.history_rows}")
        headline = {
            key: run.summary[key] for key in ("test_acc", "density", "wall_time_s") if key in run.summary
        }
        lines.append(f"  summary: {len(run.summary)} keys {json.dumps(headline)}")
        for name, aliases in run.artifacts.items():
            lines.append(f"  artifact {name}: {len(aliases)} versions ({', '.join(aliases)})")
        missing = [payload for payload in run.payloads if not payload.exists]
        lines.append(f"  payloads sync would upload: {len(run.payloads)}, missing: {len(missing)}")
        for payload in missing:
            hint = ""
            if payload.run_file and (Path(run_dir) / payload.run_file).is_file():
                hint = " (the run directory moved: `harness wandb --relocate` fixes it)"
            lines.append(
                f"    missing {payload.artifact or 'files'}/{payload.name}: {payload.local_path}{hint}"
            )
    return "\n".join(lines)


def offline_command(
    run_dir: Path, *, relocate_artifacts: bool = False, drop_damaged: bool = False, out: Any = None
) -> int:
    """`harness wandb RUN_DIR`: optionally relocate the mask artifacts, then describe the mirror."""
    import sys

    out = sys.stdout if out is None else out
    if drop_damaged and not relocate_artifacts:
        raise UserError("--drop-damaged: only with --relocate (it says what a rewrite may drop)")
    if relocate_artifacts:
        moved = relocate(run_dir, drop_damaged=drop_damaged)
        out.write(f"relocated {moved} artifact entries to {run_dir.resolve()}\n")
    out.write(describe(run_dir) + "\n")
    return 0
