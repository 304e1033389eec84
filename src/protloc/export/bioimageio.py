"""A BioImage Model Zoo package (bioimage.io, format 0.5) of a GapNet-PL model.

The package is what bioimageio.core, ilastik, deepImageJ, QuPath and napari run: ``rdf.yaml`` names
the four input channels in the network's order and the 13 output classes, states the pixel size on
the y and x axes, the preprocessing the network needs (zero mean, unit variance per channel and
image, eps 1e-7 as protloc's normalisation) and a sigmoid postprocessing; test input and output
tensors (a synthetic field and protloc's own probabilities for it), a cover, the paper to cite and
the licence; the weights three ways: ``pytorch_state_dict`` with its self-contained architecture
file, TorchScript and ONNX. ``bioimageio.spec`` writes and validates the zip.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from protloc.version import __version__ as protloc_version
from protloc.errors import ProtlocError
from protloc.inference.normalization import EPSILON, normalize
from protloc.export.metadata import ExportResult, model_metadata

FORMAT_VERSION = "0.5.4"
PAPER = ("Rumetshofer E, Hofmarcher M, Röhrl C, Hochreiter S, Klambauer G. Human-level protein localization "
         "with convolutional neural networks. International Conference on Learning Representations (ICLR) 2019.")
PAPER_URL = "https://openreview.net/forum?id=ryl5khRcKm"
PAPER_AUTHORS = ("Elisabeth Rumetshofer", "Markus Hofmarcher", "Clemens Röhrl", "Sepp Hochreiter",
                 "Günter Klambauer")
# The licence of the published weights, as in the authors' repository (ml-jku/gapnet-pl, LICENSE).
AUTHORS_LICENSE = """BSD 2-Clause License

Copyright (c) 2019, Institute for Machine Learning, Johannes Kepler University Linz
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

* Redistributions of source code must retain the above copyright notice, this
  list of conditions and the following disclaimer.

* Redistributions in binary form must reproduce the above copyright notice,
  this list of conditions and the following disclaimer in the documentation
  and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""
ARCHITECTURE_FILE = Path(__file__).with_name("gapnet_pl_architecture.py")
# GapNet-PL halves the resolution four times (two strided convolutions, two poolings).
MIN_SIDE, SIDE_STEP = 64, 16


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def test_image(size: int) -> np.ndarray:
    """A synthetic field (a nuclear protein) as the package's test input, float32 [1, 4, size, size]."""
    from protloc.data.synth import render_sample

    if size < MIN_SIDE or size % SIDE_STEP:
        raise ProtlocError(f"--test-size must be a multiple of {SIDE_STEP} of at least {MIN_SIDE}, got {size}")
    return render_sample(7, ["Nucleus"], size).astype(np.float32)[None]


def write_cover(image: np.ndarray, probabilities: np.ndarray, classes: list[str], path: Path) -> None:
    """The test input as HPA shows it beside the probabilities the model gives it (2:1, as the zoo asks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from protloc import visualization as render

    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 4), dpi=100, gridspec_kw={"width_ratios": [1, 1.2]})
    left.imshow(render.composite(image))
    left.set_axis_off()
    left.set_title("test input (synthetic): nucleus blue, microtubules red, protein green", fontsize=8)
    order = np.argsort(probabilities)
    right.barh([classes[i] for i in order], probabilities[order], color="#2a9d3a")
    right.set_xlim(0, 1)
    right.set_xlabel("probability", fontsize=8)
    right.tick_params(labelsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def documentation(meta: dict, pixel_size: float, published: bool) -> str:
    classes = "\n".join(f"{i}. {c} (decision threshold {t:.2f})"
                        for i, (c, t) in enumerate(zip(meta["classes"], meta["thresholds"]), 1))
    weights = ("the weights the paper's authors published (ml-jku/gapnet-pl, BSD-2-Clause), imported by protloc "
               "from their TensorFlow checkpoint" if published else "weights trained with protloc")
    return f"""# GapNet-PL: protein localisation in four-channel fluorescence images

GapNet-PL (Rumetshofer et al., ICLR 2019) tells where in a human cell a protein sits, from one
field of view in four channels, as thirteen independent class probabilities. This package holds
{weights}; it was written by protloc {protloc_version}.

## Input
`image`: float32 [batch, channel, y, x], channels in this order: **nucleus** (DAPI/Hoechst),
**microtubules** (tubulin), **ER** (calreticulin), **protein** (the stained protein of interest).
Pixel size {pixel_size} µm (the model does not rescale: bring images to this pixel size first).
Any y and x from {MIN_SIDE} px in steps of {SIDE_STEP} (the network is fully convolutional and averages
over the image). Preprocessing: each channel of each image to zero mean and unit variance
((x - mean) / (std + 1e-7)), as in training.

## Output
`probabilities`: float32 [batch, class], sigmoid of the logits, one per class (several may be
present at once):

{classes}

## Citation
{PAPER} {PAPER_URL}
"""


def export_bioimageio(model: dict, out: str | Path, *, pixel_size_um: float | None = None,
                      authors: list[str] | None = None, license: str | None = None,
                      test_size: int = 256) -> ExportResult:
    from bioimageio.spec import InvalidDescr, load_description, save_bioimageio_package

    from protloc.export.onnx import export_onnx
    from protloc.export.torchscript import export_torchscript

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ProtlocError(f"a bioimage.io package is a .zip file, not {out.name}")
    payload, network = model["payload"], model["network"].eval()
    meta = model_metadata(model)
    source = payload.get("source") or {}
    published = bool(source.get("published_release"))
    pixel_size = pixel_size_um or meta["pixel_size_um"]
    if pixel_size is None:
        raise ProtlocError("the model file does not record the pixel size it was trained at: give --pixel-size UM")
    pixel_size = float(pixel_size)
    if pixel_size <= 0:
        raise ProtlocError(f"--pixel-size must be positive, got {pixel_size}")
    if authors:
        people = list(authors)
    elif source.get("kind") == "imported-tensorflow-checkpoint":
        people = list(PAPER_AUTHORS)
    else:
        raise ProtlocError("say who trained this model: --author NAME (repeatable)")
    classes = list(payload["classes"])

    with tempfile.TemporaryDirectory(prefix="protloc-bioimageio-") as tmp:
        folder = Path(tmp)
        image = test_image(test_size)
        with torch.no_grad():
            logits = network(torch.from_numpy(normalize(image))).numpy()
        probabilities = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
        np.save(folder / "test_input.npy", image)
        np.save(folder / "test_output.npy", probabilities)
        write_cover(image[0], probabilities[0], classes, folder / "cover.png")
        (folder / "README.md").write_text(documentation(meta, pixel_size, published))
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, folder / "weights.pt")
        shutil.copyfile(ARCHITECTURE_FILE, folder / ARCHITECTURE_FILE.name)
        checks = export_onnx(network, folder / "weights.onnx", metadata=meta).checks
        checks += export_torchscript(network, folder / "weights_torchscript.pt", metadata=meta).checks
        attachments = []
        if published:
            (folder / "LICENSE").write_text(AUTHORS_LICENSE)
            attachments.append({"source": "LICENSE", "sha256": sha256(folder / "LICENSE")})

        def file(name: str) -> dict:
            return {"source": name, "sha256": sha256(folder / name)}

        space = {"size": {"min": MIN_SIDE, "step": SIDE_STEP}, "unit": "micrometer", "scale": pixel_size}
        rdf = {
            "type": "model",
            "format_version": FORMAT_VERSION,
            "name": f"GapNet-PL protein localisation ({len(classes)} classes)",
            "description": "Where in a human cell a protein sits, from a four-channel fluorescence field "
                           "(nucleus, microtubules, ER, protein): one sigmoid probability per class "
                           "(GapNet-PL, Rumetshofer et al., ICLR 2019).",
            "authors": [{"name": name} for name in people],
            "cite": [{"text": PAPER, "url": PAPER_URL}],
            "license": "BSD-2-Clause" if published else (license or "CC-BY-4.0"),
            "documentation": "README.md",
            "covers": ["cover.png"],
            "tags": ["protein-localization", "classification", "fluorescence-light-microscopy", "2d",
                     "human-protein-atlas", "cells", "pytorch", "onnx", "torchscript"],
            "inputs": [{
                "id": "image",
                "description": "four-channel field: nucleus, microtubules, ER, protein (raw intensities)",
                "axes": [{"type": "batch"},
                         {"type": "channel", "channel_names": list(payload["channels"])},
                         {"type": "space", "id": "y", **space},
                         {"type": "space", "id": "x", **space}],
                "test_tensor": file("test_input.npy"),
                "data": {"type": "float32"},
                "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                  {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"], "eps": EPSILON}}],
            }],
            "outputs": [{
                "id": "probabilities",
                "description": "independent probability of each class (sigmoid of the logits)",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": classes}],
                "test_tensor": file("test_output.npy"),
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "sigmoid"}],
            }],
            "weights": {
                "pytorch_state_dict": {
                    **file("weights.pt"),
                    "architecture": {**file(ARCHITECTURE_FILE.name), "callable": "GapNetPL",
                                     "kwargs": {"num_classes": len(classes), "in_channels": len(payload["channels"])}},
                    "pytorch_version": torch.__version__.split("+")[0],
                },
                "torchscript": {**file("weights_torchscript.pt"), "parent": "pytorch_state_dict",
                                "pytorch_version": torch.__version__.split("+")[0]},
                "onnx": {**file("weights.onnx"), "parent": "pytorch_state_dict", "opset_version": 17},
            },
            "config": {"protloc": {"model": payload["model"], "label_set": payload.get("label_set"),
                                   "thresholds": meta["thresholds"], "crop_size": payload.get("crop_size"),
                                   "version": protloc_version}},
        }
        if attachments:
            rdf["attachments"] = attachments
        if published and source.get("repository"):
            rdf["git_repo"] = str(source["repository"])
        rdf_path = folder / "rdf.yaml"
        rdf_path.write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True))
        description = load_description(rdf_path)
        if isinstance(description, InvalidDescr):
            raise ProtlocError(f"the bioimage.io description is invalid: {_first_error(description)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_zip = out.with_name(f".{out.name}.tmp.zip")
        try:
            save_bioimageio_package(rdf_path, output_path=tmp_zip)
            tmp_zip.replace(out)
        finally:
            tmp_zip.unlink(missing_ok=True)
    checks.insert(0, f"bioimage.io model, format 0.5: valid (bioimageio.spec); pixel size {pixel_size} µm; "
                     f"channels {', '.join(payload['channels'])}")
    return ExportResult(out, "bioimageio", checks)


def _first_error(description) -> str:
    for detail in description.validation_summary.details:
        for error in detail.errors:
            return f"{'.'.join(str(p) for p in error.loc)}: {error.msg}".splitlines()[0]
    return "see bioimageio validate"
