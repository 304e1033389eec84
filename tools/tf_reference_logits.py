"""Reference logits of the authors' GapNet-PL, computed with TensorFlow (NOT part of protloc or its tests).

Run it in a throw-away environment outside the repository, never in protloc's own:

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfenv/bin/python tools/tf_reference_logits.py ../shared/pretrained/gapnet-pl \
        --out tests/fixtures/gapnet_pl_reference.json

It loads the published checkpoint with TensorFlow's own reader (tf.train.load_checkpoint) and
builds the network with TensorFlow ops the way the authors' code does (tensorflow_models/
architectures.py and TeLL/layers.py in ml-jku/gapnet-pl): NHWC; every 3x3 convolution zero-pads the
input by one pixel on each side ("ZEROPAD": tf.pad then VALID, here as explicit padding
[[0,0],[1,1],[1,1],[0,0]]) at stride 1 and 2 alike, adds the bias, applies SELU; 2x2/2 max pooling
(padding SAME, identical to VALID for even sizes); global averages of block 1 (after its max pool),
block 2 (after its max pool) and block 3; concatenation; two dense SELU layers and a linear output.
Dropout is the identity at inference and is left out.

The input is deterministic: see ``make_input`` (the fixture records the recipe, and protloc's test
rebuilds it with numpy alone, permutes it into the canonical channel order and compares).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np

SEED = 20190611
SIZE = 1024
EPS = 1e-7
# The checkpoint's input channel order that protloc's importer assumes (see protloc.pretrained.importer).
CHECKPOINT_CHANNEL_ORDER = ["nucleus", "protein", "microtubules", "er"]
CLASSES = ["Actin filaments", "Centrosome", "Cytosol", "Endoplasmic reticulum", "Golgi apparatus",
           "Intermediate filaments", "Microtubules", "Mitochondria", "Nuclear membrane", "Nucleoli",
           "Nucleus", "Plasma membrane", "Vesicles"]

RECIPE = {
    "generator": "numpy.random.default_rng(seed) (PCG64)",
    "seed": SEED,
    "draw": "u = rng.random((H, W, 4)) in float64, shape [height, width, channel], H = W = 1024",
    "transform": "x = u**3 + 0.5 * smooth, smooth[i, j, c] = 1 + sin(2*pi*(c+1)*i/H) * cos(2*pi*(c+2)*j/W)",
    "normalization": "per channel over height and width, in float64: (x - mean) / (std + 1e-7) with the "
                     "population std (ddof=0); then cast to float32",
    "channel_order": CHECKPOINT_CHANNEL_ORDER,
    "layout": "NHWC [1, 1024, 1024, 4] as fed to the TensorFlow graph",
}


# A second input whose sides are not multiples of 16: there the two 2x2 max pools meet odd sizes, and
# TensorFlow's SAME pooling keeps the last row/column (output ceil(n/2)) where a floor-mode pool drops it.
ODD_SEED = 7
ODD_SHAPE = (301, 457)


def make_input(seed: int = SEED, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """The normalised input [height, width, 4] (float32), channels in the checkpoint's order."""
    rng = np.random.default_rng(seed)
    u = rng.random((height, width, 4))
    i = np.arange(height, dtype=np.float64)[:, None, None]
    j = np.arange(width, dtype=np.float64)[None, :, None]
    c = np.arange(4, dtype=np.float64)[None, None, :]
    smooth = 1.0 + np.sin(2 * np.pi * (c + 1) * i / height) * np.cos(2 * np.pi * (c + 2) * j / width)
    x = u**3 + 0.5 * smooth
    mean = x.mean(axis=(0, 1), keepdims=True)
    std = x.std(axis=(0, 1), keepdims=True)
    return ((x - mean) / (std + EPS)).astype(np.float32)


BUNDLE_DTYPES = ["float32", "float64", "int32", "int64", "uint8", "int8", "int16", "float16", "bool"]


def bundle_fixture_values() -> dict[str, np.ndarray]:
    """Small, exactly representable tensors of many dtypes, with long shared-prefix names.

    The names exercise prefix compression and restart points; TensorFlow writes 256 KiB table
    blocks, so the index stays a single data block.
    """
    values = {}
    for k in range(64):
        dtype = BUNDLE_DTYPES[k % len(BUNDLE_DTYPES)]
        shape = [(1,), (3,), (2, 3), (2, 1, 2), ()][k % 5]
        count = int(np.prod(shape))
        raw = (np.arange(count) * (k + 1) - k) % 50
        name = f"scope-{k // 10:02d}/a_rather_long_variable_name_to_fill_blocks_{k:03d}/{dtype}"
        values[name] = (raw % 2).astype(bool).reshape(shape) if dtype == "bool" else raw.astype(dtype).reshape(shape)
    return values


def write_bundle_fixture(tf, folder: str) -> None:
    import os

    os.makedirs(folder, exist_ok=True)
    values = bundle_fixture_values()
    names = sorted(values)
    tf.raw_ops.SaveV2(prefix=f"{folder}/small.ckpt", tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(values[n]) for n in names])
    expected = {n: {"dtype": str(values[n].dtype), "shape": list(values[n].shape),
                    "values": values[n].ravel().tolist()} for n in names}
    with open(f"{folder}/expected.json", "w") as handle:
        json.dump({"written_by": f"tools/tf_reference_logits.py, TensorFlow {tf.__version__} SaveV2",
                   "variables": expected}, handle, indent=0)
        handle.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--bundle-fixture", metavar="DIR", default=None,
                        help="also write a small TensorFlow-written bundle with many variables and dtypes "
                             "(several table blocks) and its expected values, for the reader's tests")
    args = parser.parse_args()

    import tensorflow as tf

    if args.bundle_fixture:
        write_bundle_fixture(tf, args.bundle_fixture)

    from tf_gapnet import gapnet_pl_graph

    graph = gapnet_pl_graph(tf, args.checkpoint_dir)
    reader = tf.train.load_checkpoint(f"{args.checkpoint_dir.rstrip('/')}/gapnet-pl.ckpt")

    def network(image):
        return graph(tf.constant(image[None])).numpy()[0]

    image = make_input()
    started = time.perf_counter()
    logits = network(image)
    seconds = time.perf_counter() - started
    odd_image = make_input(ODD_SEED, *ODD_SHAPE)
    odd_logits = network(odd_image)

    kernel = reader.get_tensor("ConvLayer-1/W_conv").astype(np.float64)
    norms = np.sqrt((kernel**2).sum(axis=(0, 1, 3)))
    fixture = {
        "description": "Logits of the authors' GapNet-PL (published checkpoint) computed with TensorFlow "
                       "by tools/tf_reference_logits.py; protloc's tests rebuild the input without TensorFlow.",
        "tensorflow_version": tf.__version__,
        "numpy_version": np.__version__,
        "checkpoint": {"files_sha256": {
            name: hashlib.sha256(open(f"{args.checkpoint_dir}/{name}", "rb").read()).hexdigest()
            for name in ("gapnet-pl.ckpt.index", "gapnet-pl.ckpt.data-00000-of-00001")},
            "training_step": int(reader.get_tensor("TeLL/tell_global_step"))},
        "input": dict(RECIPE, sha256_float32=hashlib.sha256(image.tobytes()).hexdigest()),
        "first_conv_input_l2_norms": [float(v) for v in norms],
        "classes": CLASSES,
        "logits": [float(v) for v in logits],
        "tensorflow_seconds": round(seconds, 3),
        "odd_size": {
            "description": "same recipe with another seed and shape; sides not multiples of 16",
            "seed": ODD_SEED, "height": ODD_SHAPE[0], "width": ODD_SHAPE[1],
            "sha256_float32": hashlib.sha256(odd_image.tobytes()).hexdigest(),
            "logits": [float(v) for v in odd_logits],
        },
    }
    with open(args.out, "w") as handle:
        json.dump(fixture, handle, indent=2)
        handle.write("\n")
    print(json.dumps({"logits": fixture["logits"], "seconds": seconds}))


if __name__ == "__main__":
    main()
