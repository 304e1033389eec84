"""The widget's chart: class probabilities as sorted horizontal bars, in napari's dark theme."""

from __future__ import annotations

import numpy as np

# napari's dark theme, so that the chart does not glare beside it
CHART_BACKGROUND, CHART_TEXT = "#262930", "#d6d6d6"
PREDICTED_COLOUR, OTHER_COLOUR = "#f0c43c", "#5b7fa6"


def probability_chart(figure, classes, probabilities, thresholds, title: str) -> None:
    """Horizontal bars, most probable on top; predicted classes (p >= threshold) bright, thresholds ticked."""
    figure.clear()
    axes = figure.add_subplot(111)
    order = np.argsort(probabilities)
    probabilities, thresholds = np.asarray(probabilities)[order], np.asarray(thresholds)[order]
    names = [classes[i] for i in order]
    colours = [PREDICTED_COLOUR if p >= t else OTHER_COLOUR for p, t in zip(probabilities, thresholds)]
    y = np.arange(len(names))
    axes.barh(y, probabilities, color=colours)
    axes.scatter(thresholds, y, marker="|", s=120, color=CHART_TEXT, label="threshold")
    for yi, p in zip(y, probabilities):
        inside = p > 0.85  # a long bar carries its value inside, in dark text
        axes.text(p - 0.02 if inside else p + 0.02, yi, f"{p:.2f}", va="center", ha="right" if inside else "left",
                  fontsize=7, color=CHART_BACKGROUND if inside else CHART_TEXT)
    axes.set_yticks(y, names, fontsize=8)
    axes.set_xlim(0, 1)
    axes.set_xlabel("probability", fontsize=8)
    axes.set_title(title, fontsize=9, color=CHART_TEXT)
    figure.patch.set_facecolor(CHART_BACKGROUND)
    axes.set_facecolor(CHART_BACKGROUND)
    axes.tick_params(colors=CHART_TEXT, labelsize=8)
    axes.xaxis.label.set_color(CHART_TEXT)
    for spine in axes.spines.values():
        spine.set_color("#555a66")
    figure.tight_layout()
    figure.canvas.draw_idle()
