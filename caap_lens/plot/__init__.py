"""Plotly figures of CAAP results; every function returns a ``plotly.graph_objects.Figure``.

* `map_overlay` — one map over its image, with the patch grid, hover per patch and a colour bar.
* `map_grid` — images (rows) × methods or settings (columns), one colour scale per column.
* `top_classes_bar` — the model's top-k classes with their probabilities or logits.
* `depth_profile_lines`, `depth_heatmap`, `depth_slider` — patch effects across depth.
* `window_sweep_heatmap`, `window_sweep_view` — a score per window ``[start, stop)`` as a start × stop
  table, alone or beside the maps of chosen windows.
* `head_grid` — per-head maps as a layers × heads grid on one colour scale.
* `metric_curves` — deletion / insertion curves of several methods, AUC in the legend.

Maps are read against "no effect": given a result (a `CAAPResult`, a depth profile or a window
sweep) or a map with its ``context_score=``, the map, depth, head and sweep plots draw
``values="effect"`` by default — the map minus the context run's own score, on a colour scale
centred at 0, so white is a patch that changes nothing — and ``values="raw"`` draws the patched
scores as computed; the colour bars say which (``"logit − context"`` or ``"logit (raw)"``). A map
given alone is drawn as given. `map_grid` draws its maps as given (pass ``result.effect``).

Example:
    >>> from caap_lens.plot import map_overlay
    >>> fig = map_overlay(x[0], result, model.grid,
    ...                   mean=model.cfg.image_mean, std=model.cfg.image_std)
    >>> fig.show()  # colour bar "logit − context"  # doctest: +SKIP
"""

from caap_lens.plot.classes import top_classes_bar
from caap_lens.plot.curves import metric_curves
from caap_lens.plot.depth import depth_heatmap, depth_profile_lines, depth_slider
from caap_lens.plot.heads import head_grid
from caap_lens.plot.maps import map_grid, map_overlay
from caap_lens.plot.sweeps import window_sweep_heatmap, window_sweep_view

__all__ = [
    "depth_heatmap",
    "depth_profile_lines",
    "depth_slider",
    "head_grid",
    "map_grid",
    "map_overlay",
    "metric_curves",
    "top_classes_bar",
    "window_sweep_heatmap",
    "window_sweep_view",
]
