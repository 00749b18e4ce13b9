"""A small CNN for TFLite (conv 3x3 -> relu -> maxpool -> dense, NHWC 1x8x8x3): build()
returns a tf.Module with one tf.function (input_signature) that kiln converts to .tflite.
Weights and input from fixed numpy seeds."""
FRAMEWORK = "tflite"


def build():
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = (rng.standard_normal((3, 3, 3, 4)) * 0.3).astype(np.float32)
    bias = (rng.standard_normal(4) * 0.1).astype(np.float32)
    dense = (rng.standard_normal((64, 10)) * 0.3).astype(np.float32)
    dense_bias = (rng.standard_normal(10) * 0.1).astype(np.float32)

    class CNN(tf.Module):
        def __init__(self):
            super().__init__(name="cnn")
            self.kernel, self.bias = tf.constant(kernel), tf.constant(bias)
            self.dense, self.dense_bias = tf.constant(dense), tf.constant(dense_bias)

        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="image")])
        def __call__(self, image):
            x = tf.nn.relu(tf.nn.conv2d(image, self.kernel, 1, "SAME") + self.bias)
            x = tf.nn.max_pool2d(x, 2, 2, "VALID")
            return tf.reshape(x, [1, 64]) @ self.dense + self.dense_bias

    x = np.random.default_rng(1).standard_normal((1, 8, 8, 3)).astype(np.float32)
    return CNN(), (x,)
