"""Pure-numpy rendering: view geometry, window/level, measurement (no Tk, testable headless)."""

from .viewport import Measurement, ViewState, measure, render_view, wl_from_drag

__all__ = ["ViewState", "render_view", "measure", "Measurement", "wl_from_drag"]
