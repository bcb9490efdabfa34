"""Compare two run stores file by file, ignoring only what measures time (a check for refactors).

    python tests/compare_run_dirs.py BEFORE AFTER

Every file must exist in both. JSON and JSON-lines files are compared as values without their timing keys
(`time/epoch_s`, `wall_time_s`), checkpoints as loaded values without `elapsed` and without the states of
Python's and NumPy's global generators (the harness never seeds them, so they come from the interpreter's
start-up entropy: two runs of the same code differ there), every other file byte for byte. Both stores
must have been written with the same `--runs-dir` path (config.yaml records it). Prints one line per
difference and exits 1 if there is any.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TIME_KEYS = frozenset({"time/epoch_s", "wall_time_s", "elapsed"})
UNSEEDED_GENERATORS = ("numpy", "python")  # in every rank's entry of a checkpoint's `rng`


def without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items() if key not in TIME_KEYS}
    if isinstance(value, list | tuple):
        return [without_times(item) for item in value]
    return value


def seeded_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    ranks = checkpoint.get("rng", [])
    ranks = ranks if isinstance(ranks, list) else [ranks]
    rng = [{key: value for key, value in rank.items() if key not in UNSEEDED_GENERATORS} for rank in ranks]
    return {**checkpoint, "rng": rng}


def same_values(left: Any, right: Any) -> bool:
    import torch

    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        return (
            isinstance(left, torch.Tensor)
            and isinstance(right, torch.Tensor)
            and left.dtype == right.dtype
            and left.shape == right.shape
            and torch.equal(left, right)
        )
    if isinstance(left, dict) and isinstance(right, dict):
        return list(left) == list(right) and all(same_values(left[key], right[key]) for key in left)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(same_values(a, b) for a, b in zip(left, right, strict=True))
    return type(left) is type(right) and left == right


def compare_file(before: Path, after: Path) -> bool:
    if before.suffix == ".pt":
        import torch

        left, right = (
            seeded_only(without_times(torch.load(path, weights_only=True))) for path in (before, after)
        )
        return same_values(left, right)
    if before.suffix == ".jsonl":
        lines = [
            [without_times(json.loads(line)) for line in path.read_text().splitlines()]
            for path in (before, after)
        ]
        return lines[0] == lines[1] and same_key_order(*lines)
    if before.suffix == ".json":
        values = [without_times(json.loads(path.read_text())) for path in (before, after)]
        return values[0] == values[1] and list(values[0]) == list(values[1])
    return before.read_bytes() == after.read_bytes()


def same_key_order(left: list[Any], right: list[Any]) -> bool:
    return all(list(a) == list(b) for a, b in zip(left, right, strict=True) if isinstance(a, dict))


def compare(before_root: Path, after_root: Path) -> list[str]:
    files = {
        side: {path.relative_to(root) for path in root.rglob("*") if path.is_file()}
        for side, root in (("before", before_root), ("after", after_root))
    }
    problems = [f"only before: {path}" for path in sorted(files["before"] - files["after"])]
    problems += [f"only after: {path}" for path in sorted(files["after"] - files["before"])]
    for path in sorted(files["before"] & files["after"]):
        if not compare_file(before_root / path, after_root / path):
            problems.append(f"differs: {path}")
    return problems


def main() -> int:
    before, after = map(Path, sys.argv[1:3])
    problems = compare(before, after)
    for line in problems:
        print(line)
    count = sum(1 for path in before.rglob("*") if path.is_file())
    print(f"{count} files compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
