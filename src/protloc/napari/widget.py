"""The protloc dock widget: predict the active image's localisation, show probabilities and maps.

A thin layer over the library: ``protloc.inference.load_model`` gives the predictor (``pretrained``,
a model file or a training run folder), ``Predictor.predict_proba`` the 13 probabilities (whole image or the
paper's patches, fp32 or bf16, optional flips/rotations), ``Predictor.localization_maps`` the maps.
The work runs in napari's thread worker, with a progress bar in the widget and in napari's activity
dock; the result lands on the main thread as a sorted bar chart and one map layer per predicted class.

Per-cell results (hook for ``protloc.cells``): set ``PredictionWidget.cell_predictor`` to a function
``(predictor, image [4, H, W]) -> (labels [H, W] int, table)`` where ``table`` maps column names to
equal-length sequences (a pandas DataFrame works) with a ``cell_id`` column matching the label values
and one probability column per class. The worker calls it after the image-level prediction, and the
widget adds a Labels layer (the table as its features) and a table of cells: clicking a cell in the
canvas or a row of the table shows that cell's probabilities in the chart. ``show_cells`` may also be
called directly with results computed elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from protloc.data.channels import CHANNELS
from protloc.errors import ProtlocError
from protloc.napari.chart import probability_chart
from protloc.napari.reader import METADATA_KEY

MODEL_KINDS = {
    "pretrained": "pretrained (published GapNet-PL)",
    "file": "model file (.pt)",
    "run": "training run folder",
}
MODES = {"whole": "whole image", "patches": "patches (the paper's protocol)"}
# fp32 first (the default, exact); auto: the fastest native one (protloc.inference.precision); no fp16 (CUDA only)
PRECISIONS = ("fp32", "auto", "bf16", "int8")
MAP_COLORMAP = "inferno"


@dataclass
class PredictionResult:
    sample_id: str
    classes: list[str]
    probabilities: np.ndarray
    thresholds: np.ndarray
    predicted: list[str]
    maps: dict[str, np.ndarray]
    model_name: str
    seconds: float
    cells: tuple | None = None


def sample_layers(layers) -> dict[str, dict[str, object]]:
    """{sample id: {channel: layer}} of the image layers the protloc reader or sample data made."""
    samples: dict[str, dict[str, object]] = {}
    for layer in layers:
        info = layer.metadata.get(METADATA_KEY) if hasattr(layer, "metadata") else None
        if info and info.get("channel") in CHANNELS:
            samples.setdefault(info["sample_id"], {})[info["channel"]] = layer
    return samples


def stack_sample(channel_layers: dict[str, object]) -> np.ndarray:
    """A sample's four layers as the canonical float32 [4, H, W]; ProtlocError if one is missing."""
    missing = [c for c in CHANNELS if c not in channel_layers]
    if missing:
        raise ProtlocError(f"the image has no {', '.join(missing)} layer (was it deleted?)")
    planes = [np.asarray(channel_layers[c].data) for c in CHANNELS]
    if len({p.shape for p in planes}) != 1 or planes[0].ndim != 2:
        raise ProtlocError("the four channel layers must be 2-D images of one shape")
    return np.stack(planes).astype(np.float32, copy=False)


class PredictionWidget(QWidget):
    """Dock widget: choose model, precision and mode, predict the active image, see the answer."""

    # Per-cell hook, see the module docstring; None until protloc.cells provides it.
    cell_predictor: Callable | None = None

    def __init__(self, napari_viewer):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self._predictors: dict[str, object] = {}
        self._worker = None
        self.last_result: PredictionResult | None = None
        self._cells_layer = None
        self._cell_rows: dict[int, dict] = {}

        self.sample_combo = QComboBox()
        self.sample_combo.setToolTip("the image to predict; follows the layer you select")
        self.model_kind = QComboBox()
        for key, label in MODEL_KINDS.items():
            self.model_kind.addItem(label, key)
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("model.pt or a runs/NAME folder")
        self.browse_button = QPushButton("…")
        self.browse_button.setMaximumWidth(32)
        path_row = QHBoxLayout()
        path_row.addWidget(self.model_path)
        path_row.addWidget(self.browse_button)
        self.precision = QComboBox()
        self.precision.addItems(PRECISIONS)
        self.precision.setToolTip("auto: the fastest precision this CPU runs natively that holds the accuracy margins; "
                                  "bf16: faster on CPUs with AVX512-BF16, probabilities within a few hundredths; "
                                  "int8: ONNX Runtime, outside the margins (docs/precision.md)")
        self.mode = QComboBox()
        for key, label in MODES.items():
            self.mode.addItem(label, key)
        self.tta = QCheckBox("average the 8 flips and rotations")
        self.maps = QCheckBox("localisation map of each predicted class")
        self.maps.setChecked(True)
        self.run_button = QPushButton("Predict")
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel("open an HPA image (File > Open, or File > Open Sample > protloc)")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.figure = Figure(figsize=(3.6, 3.4), dpi=100)
        self.chart = FigureCanvasQTAgg(self.figure)
        self.chart.setMinimumHeight(300)
        self.cell_table = QTableWidget(0, 4)
        self.cell_table.setHorizontalHeaderLabels(["cell", "top class", "p", "area"])
        self.cell_table.setSelectionBehavior(QTableWidget.SelectRows)
        self.cell_table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.cell_table.setVisible(False)

        form = QFormLayout()
        form.addRow("Image", self.sample_combo)
        form.addRow("Model", self.model_kind)
        form.addRow("", path_row)
        form.addRow("Precision", self.precision)
        form.addRow("Mode", self.mode)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.tta)
        layout.addWidget(self.maps)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.chart)
        layout.addWidget(self.cell_table)
        layout.addStretch(1)

        self.model_kind.currentIndexChanged.connect(self._model_kind_changed)
        self.browse_button.clicked.connect(self._browse)
        self.run_button.clicked.connect(self.run)
        self.cell_table.itemSelectionChanged.connect(self._cell_row_selected)
        self.viewer.layers.events.inserted.connect(self._refresh_samples)
        self.viewer.layers.events.removed.connect(self._refresh_samples)
        self.viewer.layers.selection.events.active.connect(self._follow_active_layer)
        self._model_kind_changed()
        self._refresh_samples()
        self._follow_active_layer()

    # --------------------------------------------------------------------------------------------
    # choices

    def _model_kind_changed(self, *_):
        needs_path = self.model_kind.currentData() != "pretrained"
        self.model_path.setEnabled(needs_path)
        self.browse_button.setEnabled(needs_path)

    def _browse(self):
        if self.model_kind.currentData() == "run":
            path = QFileDialog.getExistingDirectory(self, "Training run folder (holding model.pt)")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "protloc model file", filter="protloc models (*.pt)")
        if path:
            self.model_path.setText(path)

    def model_spec(self) -> str:
        kind = self.model_kind.currentData()
        if kind == "pretrained":
            return "pretrained"
        path = self.model_path.text().strip()
        if not path:
            raise ProtlocError(f"choose the {MODEL_KINDS[kind]} (the … button)")
        return path

    def _refresh_samples(self, *_):
        current = self.sample_combo.currentText()
        ids = list(sample_layers(self.viewer.layers))
        self.sample_combo.blockSignals(True)
        self.sample_combo.clear()
        self.sample_combo.addItems(ids)
        if current in ids:
            self.sample_combo.setCurrentText(current)
        self.sample_combo.blockSignals(False)
        self.run_button.setEnabled(bool(ids) and self._worker is None)

    def _follow_active_layer(self, *_):
        active = self.viewer.layers.selection.active
        info = getattr(active, "metadata", {}).get(METADATA_KEY) if active is not None else None
        if info and self.sample_combo.findText(info.get("sample_id", "")) >= 0:
            self.sample_combo.setCurrentText(info["sample_id"])

    # --------------------------------------------------------------------------------------------
    # running

    def run(self):
        """Start a prediction of the chosen image in napari's thread worker (returns the worker)."""
        from napari.qt.threading import create_worker

        try:
            sample_id = self.sample_combo.currentText()
            if not sample_id:
                raise ProtlocError("no protloc image open: File > Open an HPA channel set, or Open Sample")
            image = stack_sample(sample_layers(self.viewer.layers)[sample_id])
            spec = self.model_spec()
        except ProtlocError as exc:
            self._show_error(str(exc))
            return None
        options = {"whole_image": self.mode.currentData() == "whole", "precision": self.precision.currentText(),
                   "tta": self.tta.isChecked()}
        steps = 2 + self.maps.isChecked() + (self.cell_predictor is not None)
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        # Say what is assumed: channels by the layers' protloc metadata, pixels as they are (not rescaled).
        self.status.setText(f"predicting {sample_id}: channels {', '.join(CHANNELS)} from its layers, "
                            f"{image.shape[2]}x{image.shape[1]} px at the file's pixel size (not rescaled) …")
        self._worker = create_worker(
            self._predict, sample_id, image, spec, options, self.maps.isChecked(), self.cell_predictor,
            _progress={"total": steps, "desc": f"protloc: {sample_id}"}, _ignore_errors=True,
        )
        self._worker.yielded.connect(self._on_step)
        self._worker.returned.connect(self._on_result)
        self._worker.errored.connect(lambda exc: self._show_error(_one_line(exc)))
        self._worker.finished.connect(self._on_finished)
        self._worker.start()
        return self._worker

    def _predictor(self, spec: str):
        from protloc.inference.predictor import load_model

        if spec not in self._predictors:  # loading takes seconds; a second run reuses it
            self._predictors[spec] = load_model(spec)
        return self._predictors[spec]

    def _predict(self, sample_id, image, spec, options, want_maps, cell_predictor):
        """Runs in the worker thread: yields a step message after each step, returns the result."""
        started = time.perf_counter()
        predictor = self._predictor(spec)
        yield f"model {predictor.name} loaded"
        probabilities = predictor.predict_proba(image, **options)
        from protloc.inference.precision import resolve_precision

        ran = resolve_precision(options["precision"], predictor.device).precision  # what answered, shown
        predicted = predictor.predicted(probabilities)
        yield "probabilities: " + (", ".join(predicted) or "no class above its threshold")
        maps = {}
        if want_maps:
            # No class above its threshold: the most probable one's map still says where the evidence is.
            wanted = predicted or [predictor.classes[int(np.argmax(probabilities))]]
            maps = predictor.localization_maps(image, wanted)
            yield f"{len(maps)} localisation map(s)"
        cells = None
        if cell_predictor is not None:
            cells = cell_predictor(predictor, image)
            yield "per-cell results"
        return PredictionResult(sample_id, list(predictor.classes), probabilities, predictor.thresholds,
                                predicted, maps, f"{predictor.name}, {ran}", time.perf_counter() - started, cells)

    def _on_step(self, message: str):
        self.progress.setValue(self.progress.value() + 1)
        self.status.setText(message)

    def _on_result(self, result: PredictionResult):
        self.last_result = result
        self.progress.setValue(self.progress.maximum())
        for name, heat in result.maps.items():
            self._put_map_layer(result.sample_id, name, heat)
        answer = ", ".join(f"{c} (p = {p:.2f})" for c, p in zip(result.classes, result.probabilities)
                           if c in result.predicted) or "no class above its threshold"
        self.status.setText(f"{result.sample_id}: {answer} — {result.model_name}, {result.seconds:.1f} s")
        probability_chart(self.figure, result.classes, result.probabilities, result.thresholds,
                           f"{result.sample_id}")
        if result.cells is not None:
            labels, table = result.cells
            self.show_cells(result.sample_id, labels, table)

    def _on_finished(self):
        self._worker = None
        self.run_button.setEnabled(self.sample_combo.count() > 0)

    def _show_error(self, message: str):
        self.progress.setValue(0)
        self.status.setText(f"<span style='color:#ff7b72'>{message}</span>")

    def _put_map_layer(self, sample_id: str, class_name: str, heat: np.ndarray):
        name = f"map {class_name} · {sample_id}"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = heat
            return
        self.viewer.add_image(heat, name=name, colormap=MAP_COLORMAP, blending="additive", opacity=0.6,
                              contrast_limits=(0.0, 1.0),
                              metadata={METADATA_KEY: {"sample_id": sample_id, "map": class_name}})

    # --------------------------------------------------------------------------------------------
    # per-cell results

    def show_cells(self, sample_id: str, labels: np.ndarray, table) -> None:
        """Show per-cell results: a Labels layer (features = table) and a clickable table of cells."""
        if self.last_result is None:
            raise ProtlocError("predict the image first: the cell table needs its classes and thresholds")
        classes = self.last_result.classes
        columns = {k: list(table[k]) for k in (table.columns if hasattr(table, "columns") else table.keys())}
        missing = [c for c in ["cell_id", *classes] if c not in columns]
        if missing:
            raise ProtlocError(f"the cell table lacks column(s) {', '.join(missing[:3])}")
        labels = np.asarray(labels)
        ids = [int(i) for i in columns["cell_id"]]
        present = set(np.unique(labels).tolist()) - {0}
        if not present <= set(ids):
            raise ProtlocError(f"labels without a table row: {sorted(present - set(ids))[:5]}")
        rows = [{k: v[i] for k, v in columns.items()} for i in range(len(ids))]
        self._cell_rows = {int(r["cell_id"]): r for r in rows}
        name = f"cells · {sample_id}"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self._cells_layer = self.viewer.add_labels(labels.astype(np.int32), name=name, opacity=0.35,
                                                   features={k: v for k, v in columns.items()},
                                                   metadata={METADATA_KEY: {"sample_id": sample_id, "cells": True}})
        self._cells_layer.mouse_drag_callbacks.append(self._cell_clicked)
        self.cell_table.setRowCount(len(rows))
        for row_index, row in enumerate(rows):
            probabilities = np.array([float(row[c]) for c in classes])
            top = int(np.argmax(probabilities))
            values = [str(row["cell_id"]), classes[top], f"{probabilities[top]:.2f}", str(row.get("area", ""))]
            for column, value in enumerate(values):
                self.cell_table.setItem(row_index, column, QTableWidgetItem(value))
        self.cell_table.setVisible(True)

    def select_cell(self, cell_id: int) -> None:
        """Highlight one cell and show its probabilities in the chart."""
        row = self._cell_rows.get(int(cell_id))
        if row is None or self.last_result is None:
            return
        result = self.last_result
        probabilities = np.array([float(row[c]) for c in result.classes])
        probability_chart(self.figure, result.classes, probabilities, result.thresholds,
                           f"{result.sample_id}, cell {cell_id}")
        if self._cells_layer is not None:
            self._cells_layer.selected_label = int(cell_id)
        ids = list(self._cell_rows)
        self.cell_table.blockSignals(True)
        self.cell_table.selectRow(ids.index(int(cell_id)))
        self.cell_table.blockSignals(False)

    def _cell_row_selected(self):
        rows = self.cell_table.selectionModel().selectedRows()
        if rows:
            self.select_cell(int(self.cell_table.item(rows[0].row(), 0).text()))

    def _cell_clicked(self, layer, event):
        value = layer.get_value(event.position, world=True)
        if value:
            self.select_cell(int(value))


def _one_line(exc: BaseException) -> str:
    """A user-facing line for an error from the worker: ProtlocError as is, others with their type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, ProtlocError) else f"{type(exc).__name__}: {text}"
