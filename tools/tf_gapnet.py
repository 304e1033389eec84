"""The authors' GapNet-PL built with TensorFlow ops from the published checkpoint (NOT part of protloc).

Shared by ``tf_reference_logits.py`` and ``tf_benchmark.py``, which run in a throw-away environment
with tensorflow-cpu (see their docstrings). The graph follows the authors' code (tensorflow_models/
architectures.py and TeLL/layers.py in ml-jku/gapnet-pl): NHWC; every 3x3 convolution zero-pads by
one pixel on each side at stride 1 and 2 alike, adds the bias, applies SELU; 2x2/2 max pooling with
SAME padding; global averages of block 1 (after its pool), block 2 (after its pool) and block 3;
two dense SELU layers and a linear output. Dropout is the identity at inference and is left out.
"""

from __future__ import annotations


def gapnet_pl_graph(tf, checkpoint_dir: str):
    """A function of normalised images [N, H, W, 4] (checkpoint channel order) to logits [N, 13]."""
    reader = tf.train.load_checkpoint(f"{checkpoint_dir.rstrip('/')}/gapnet-pl.ckpt")
    variables = {name: tf.constant(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()
                 if name.startswith(("ConvLayer-", "FC-"))}
    pad = [[0, 0], [1, 1], [1, 1], [0, 0]]

    def conv(x, layer, stride):
        y = tf.nn.conv2d(x, variables[f"ConvLayer-{layer}/W_conv"], strides=[1, stride, stride, 1], padding=pad)
        return tf.nn.selu(y + variables[f"ConvLayer-{layer}/b_conv"])

    def maxpool(x):
        return tf.nn.max_pool2d(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")

    def dense(x, layer, activation):
        return activation(tf.matmul(x, variables[f"FC-{layer}/W_dense"]) + variables[f"FC-{layer}/b_dense"])

    def network(x):
        block1 = maxpool(conv(x, 1, 2))
        h = conv(block1, 2, 2)
        h = conv(h, 3, 1)
        h = conv(h, 4, 1)
        h = conv(h, 5, 1)
        block2 = maxpool(h)
        h = conv(block2, 6, 1)
        h = conv(h, 7, 1)
        block3 = conv(h, 8, 1)
        features = tf.concat([tf.reduce_mean(b, axis=[1, 2]) for b in (block1, block2, block3)], axis=1)
        h = dense(features, 1, tf.nn.selu)
        h = dense(h, 2, tf.nn.selu)
        return dense(h, 3, tf.identity)

    return network
