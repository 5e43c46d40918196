"""The tracker a run config asks for (its ``tracking`` section):

| tracking.wandb | tracking.mode | tracking.figures | tracker |
| --- | --- | --- | --- |
| true | online / offline | either | ``WandbTracker`` (draws the figures too when asked) |
| false, or mode disabled | | true | ``FigureTracker`` |
| false, or mode disabled | | false | ``Tracker`` (nothing) |

It sits above the trackers it chooses from, so that none of them imports another's chooser.
"""

from __future__ import annotations

from .tracker import FigureTracker, Tracker


def build_tracker(cfg, folder) -> Tracker:
    """The tracker for a run of config ``cfg`` writing into ``folder`` (a ``RunFolder``).

    Processes that do not write the run folder (non-zero ranks) get the do-nothing tracker.
    """
    if not folder.enabled:
        return Tracker()
    tracking = cfg.tracking
    if tracking.wandb and tracking.mode != "disabled":
        # W&B's client is imported only by runs that use it.
        from .wandb_tracker import WandbTracker

        return WandbTracker(
            folder.path,
            project=tracking.project,
            entity=tracking.entity,
            group=tracking.group,
            tags=list(tracking.tags or []),
            mode=tracking.mode,
            figures=tracking.figures,
            announce=bool(cfg.run.progress),
        )
    if tracking.figures:
        return FigureTracker(folder.path)
    return Tracker()
