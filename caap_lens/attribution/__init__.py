"""The CAAP method: contexts, scores, targets, units, the batched runner and `caap` itself."""

from caap_lens.attribution.engine import caap, check_window, default_window
from caap_lens.attribution.result import CAAPResult

__all__ = ["CAAPResult", "caap", "check_window", "default_window"]
