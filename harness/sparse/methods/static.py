"""The two references every sparse method is compared with: no sparsity, and a fixed random sparse mask."""

from __future__ import annotations

from harness.sparse.methods.base import RandomMaskSettings, SparsityMethod


class Dense(SparsityMethod):
    """No sparsity: the reference every method is compared with. It reads no setting."""

    name = "dense"
    sparse = False


class Static(SparsityMethod):
    """A random mask at the final density, drawn per layer by the distribution (ERK by default), fixed."""

    name = "static"
    reference = "fixed random sparse mask (e.g. Mocanu et al. 2018, Evci et al. 2020 as baseline)"
    Settings = RandomMaskSettings

    def initial_density(self) -> float:
        return 1.0 - self.settings.sparsity
