"""A small JAX MLP (16 -> 32 relu -> 8, batch 2): build() returns (function, inputs).

JAX seeds nothing for kiln, so the weights and the example input come from fixed numpy seeds."""
FRAMEWORK = "jax"


def build():
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 32)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((32, 8)) * 0.3).astype(np.float32)
    b2 = (rng.standard_normal(8) * 0.1).astype(np.float32)

    def mlp(x):
        return jnp.maximum(x @ w1 + b1, 0.0) @ w2 + b2

    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    return mlp, (x,)
