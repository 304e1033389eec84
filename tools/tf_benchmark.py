"""Time the authors' GapNet-PL graph in TensorFlow on a 2048² image (NOT part of protloc or its tests).

Run it in a throw-away environment, never in protloc's own (TensorFlow is no dependency of protloc):

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfenv/bin/python tools/tf_benchmark.py ../shared/pretrained/gapnet-pl --out tf.json

The network is built as in tools/tf_reference_logits.py (the authors' code: NHWC, explicit zero
padding of one pixel before every 3x3 convolution, bias, SELU, 2x2 SAME max pooling, global
averages, three dense layers) from the restored checkpoint, inside one ``tf.function`` (graph mode;
TensorFlow's oneDNN optimisations are on by default on CPUs with AVX512). The timed call includes the
per-image, per-channel normalisation, as protloc's timings do. Two ways to predict one 2048² image:

* ``patches``: the paper's protocol, four 1024² patches in one batch, sigmoid outputs averaged;
* ``whole``: one pass over the whole 2048² image (the network is fully convolutional).

Prints one JSON object (also written to ``--out``): seconds per image (best and median of
``--repeats`` after ``--warmup`` calls), the machine, TensorFlow's version and thread settings.
``protloc bench --tf-result FILE`` puts these figures beside its own in the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

SIZE = 2048
PATCH = 1024
EPS = 1e-7


def build(tf, checkpoint_dir: str):
    from tf_gapnet import gapnet_pl_graph

    graph = gapnet_pl_graph(tf, checkpoint_dir)

    def network(images):  # raw [N, H, W, 4] float32
        mean, variance = tf.nn.moments(images, axes=[1, 2], keepdims=True)
        return graph((images - mean) / (tf.sqrt(variance) + EPS))

    @tf.function(jit_compile=False)
    def patches(image):  # [1, 2048, 2048, 4]
        tiles = tf.concat([image[:, r : r + PATCH, c : c + PATCH] for r in (0, PATCH) for c in (0, PATCH)], axis=0)
        return tf.reduce_mean(tf.sigmoid(network(tiles)), axis=0)

    @tf.function(jit_compile=False)
    def whole(image):
        return tf.sigmoid(network(image))[0]

    return {"patches": patches, "whole": whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", default="patches,whole")
    args = parser.parse_args()

    import tensorflow as tf

    rng = np.random.default_rng(0)
    image = tf.constant((rng.random((1, SIZE, SIZE, 4), dtype=np.float32) ** 3 * 4000.0).astype(np.float32))
    functions = build(tf, args.checkpoint_dir)
    result = {
        "tool": "tools/tf_benchmark.py",
        "tensorflow_version": tf.__version__,
        "onednn_opts_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for AVX512 CPUs)"),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "image": f"{SIZE}x{SIZE}x4 float32, raw intensities, normalised inside the graph",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "modes": {},
    }
    for mode in args.modes.split(","):
        function = functions[mode]
        start = time.perf_counter()
        probs = function(image).numpy()
        first = time.perf_counter() - start
        for _ in range(max(0, args.warmup - 1)):
            function(image).numpy()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            function(image).numpy()
            times.append(time.perf_counter() - start)
        result["modes"][mode] = {
            "seconds_best": min(times), "seconds_median": statistics.median(times), "repeats": len(times),
            "first_call_seconds": first, "probabilities": [float(p) for p in probs],
        }
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
