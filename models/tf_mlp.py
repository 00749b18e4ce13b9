"""A small TensorFlow MLP (16 -> 32 relu -> 8, batch 2) as a tf.Module whose tf.function has
an input_signature: build() returns (module, inputs). Weights and input from fixed numpy seeds."""
FRAMEWORK = "tf"


def build():
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    shapes = {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "b2": (8,)}
    weights = {k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in shapes.items()}

    class MLP(tf.Module):
        def __init__(self):
            super().__init__(name="mlp")
            for k, v in weights.items():
                setattr(self, k, tf.Variable(v, name=k))

        @tf.function(input_signature=[tf.TensorSpec([2, 16], tf.float32, name="x")])
        def predict(self, x):
            return tf.nn.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2

    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    return MLP(), (x,)
