"""What a client of the engine (a study) plugs into a run: `RunExtension`, whose methods
`harness.engine.lifecycle.run_training` calls at named points of the run's life. The base does what a plain
run does at each point (log the method's initial masks, nothing else), so a client overrides only the
points it needs; the engine never learns what the client is.

`log_mask_update` lives here, not in the lifecycle, because the default starting point logs through it and
the lifecycle imports this module.
"""

from __future__ import annotations

from typing import Any

from harness.engine.console import summary_line
from harness.engine.session import Session
from harness.sparse import MaskSet, MaskUpdate
from harness.store.tracking import Tracker


class RunExtension:
    """Hook points of one run, in the order a fresh run meets them: `start`, then per epoch
    `after_evaluation` and `checkpoint_state`, then `add_to_summary` and `summary_line`; a resumed run meets
    `resume` instead of `start`."""

    def start(self, session: Session, tracker: Tracker) -> None:
        """Before the first step of a fresh run (never on a resume): put the session in the state the run
        starts from, and log the mask event that made its first masks. The default starts from the
        session as built, its masks logged as the method's step-0 event."""
        log_mask_update(tracker, session.masks, session.method.initial_record(), epoch=0)

    def checkpoint_state(self) -> dict[str, Any]:
        """Extra state carried in every checkpoint, as entries of its `extra` (beside the engine's own,
        whose names it must not take), so that a run resumed from it gets them back through `resume`."""
        return {}

    def resume(self, extra: dict[str, Any]) -> None:
        """On a resume, once the session holds the checkpoint's state: the checkpoint's `extra` entries."""

    def after_evaluation(self, session: Session) -> None:
        """After each epoch's evaluation (its numbers are in `session.last_epoch`), before its checkpoint:
        what this records survives a resume through `checkpoint_state`."""

    def add_to_summary(self, session: Session, summary: dict[str, Any]) -> None:
        """At the end of the run, before the summary is written: add to it or change it in place."""

    def summary_line(self, summary: dict[str, Any]) -> str:
        """The one line that ends the run's log, from its written summary."""
        return summary_line(summary)


def log_mask_update(tracker: Tracker, masks: MaskSet, update: MaskUpdate, *, epoch: float) -> None:
    """A mask-update event in the run store: its `mask_update` line and the snapshot of the masks it left.

    Every mask change goes through here: the step-0 masks, the method's updates, and those a client makes
    itself (a study that prunes)."""
    tracker.log({"kind": "mask_update", "step": update.step, "epoch": epoch, **update.record()})
    tracker.log_masks(update.step, masks.as_dict())
