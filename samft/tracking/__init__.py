"""MLflow experiment tracking: the :class:`Tracker` used by training, and run comparison.

``Tracker.start(cfg.tracking, config=..., project_root=...)`` checks the store and opens a run
(:mod:`samft.tracking.run`); ``Tracker.disabled()`` is the no-op stand-in for non-zero ranks or
``tracking.enabled=false``. Run comparison lives in :mod:`samft.tracking.compare` (imported on demand).
"""

from samft.tracking.mlflow_tracker import Tracker
from samft.tracking.store import TrackingError, resolve_tracking_uri

__all__ = ["Tracker", "TrackingError", "resolve_tracking_uri"]
