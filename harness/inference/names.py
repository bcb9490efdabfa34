"""The export's names that the torch-free command layer checks options against before torch is imported
(`harness.inference.export` imports torch at its top)."""

from __future__ import annotations

from pathlib import Path

EXPORT_NAME = "export.pt"
LAYER_CHOICES = ("auto", "dense", "sparse")


def default_out(run_dir: Path | None, arch: str, dataset: str, sparsity: float | None) -> Path:
    if run_dir is not None:
        return Path(run_dir) / EXPORT_NAME
    return Path(f"{arch}-{dataset}-s{sparsity}.export.pt")
