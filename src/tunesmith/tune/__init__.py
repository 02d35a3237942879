"""`tunesmith tune`: an Optuna study over train + val scoring until the config's targets pass on val.

Layers: space (dimensions, trial configs) and budget (time) are pure; workers (liveness) and trial (one run)
sit on the runner; study runs the loop and page writes the study's page and summary.
"""

from tunesmith.tune.space import Space, SpaceError, build_space
from tunesmith.tune.study import TuneError, TuneOptions, TuneOutcome, run_tune

__all__ = ["Space", "SpaceError", "TuneError", "TuneOptions", "TuneOutcome", "build_space", "run_tune"]
