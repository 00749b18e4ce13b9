"""The model zoo's JAX architectures, in plain jax (no flax), each a serialized jax.export
(`Exported.serialize()` saved as `<name>.jaxexport`, the file kiln reads for JAX): weights are
seeded numpy arrays closed over by the function, so they become the export's constants.

- `jax_mlp`: 3 dense layers with GELU, batch 8 x 64 features;
- `jax_cnn`: two 3x3 convolutions (NHWC, lax.conv_general_dilated), ReLU, average pool, dense;
- `jax_transformer`: one pre-norm encoder block, 4-head self-attention with a softmax over
  keys, and an MLP, 1 x 16 tokens x 64;
- `jax_rnn`: a tanh RNN over 12 steps with lax.scan, then a dense head.

MODELS maps each name to a builder: builder(folder) writes the model into folder and returns
its path."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

SEED = 0


def _jax():
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    return jax


def _weights(*shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Seeded weights, scaled by fan-in so activations stay of order one through the layers."""
    rng = np.random.default_rng(SEED)
    return [(rng.standard_normal(s) / np.sqrt(s[0] if len(s) > 1 else 1)).astype(np.float32)
            for s in shapes]


def mlp():
    jax = _jax()
    w1, b1, w2, b2, w3, b3 = _weights((64, 128), (128,), (128, 128), (128,), (128, 10), (10,))

    def forward(x):
        x = jax.nn.gelu(x @ w1 + b1)
        x = jax.nn.gelu(x @ w2 + b2)
        return x @ w3 + b3
    return forward, [((8, 64), np.float32)]


def cnn():
    jax = _jax()
    k1, k2, dense = _weights((3, 3, 3, 16), (3, 3, 16, 32), (32, 10))
    k1, k2 = k1 / 3, k2 / 3   # fan-in of a 3x3 kernel is 9x its input channels

    def conv(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def forward(image):
        x = jax.nn.relu(conv(image, k1))
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        x = jax.nn.relu(conv(x, k2))
        return x.mean(axis=(1, 2)) @ dense
    return forward, [((1, 32, 32, 3), np.float32)]


def transformer():
    jax = _jax()
    jnp = jax.numpy
    width, heads = 64, 4
    wq, wk, wv, wo, up, down = _weights((width, width), (width, width), (width, width),
                                        (width, width), (width, 4 * width), (4 * width, width))

    def norm(x):
        mean = x.mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)

    def attention(x):
        tokens = x.shape[1]

        def split(t):   # (batch, tokens, width) -> (batch, heads, tokens, width / heads)
            return t.reshape(1, tokens, heads, width // heads).transpose(0, 2, 1, 3)
        q, k, v = split(x @ wq), split(x @ wk), split(x @ wv)
        scores = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(width // heads), axis=-1)
        return (scores @ v).transpose(0, 2, 1, 3).reshape(1, tokens, width) @ wo

    def forward(x):
        x = x + attention(norm(x))
        return x + jax.nn.gelu(norm(x) @ up) @ down
    return forward, [((1, 16, width), np.float32)]


def rnn():
    jax = _jax()
    jnp = jax.numpy
    w_in, w_h, head = _weights((16, 32), (32, 32), (32, 4))

    def forward(sequence):   # (steps, batch, features)
        def step(h, x):
            h = jnp.tanh(x @ w_in + h @ w_h)
            return h, h
        last, _ = jax.lax.scan(step, jnp.zeros((sequence.shape[1], 32), jnp.float32), sequence)
        return last @ head
    return forward, [((12, 2, 16), np.float32)]


def export(make, name: str, folder: Path) -> Path:
    jax = _jax()
    forward, specs = make()
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in specs]
    exported = jax.export.export(jax.jit(forward))(*args)
    out = folder / f"{name}.jaxexport"
    out.write_bytes(exported.serialize())
    return out


MODELS: dict[str, Callable[[Path], Path]] = {
    f"jax_{make.__name__}": functools.partial(export, make, make.__name__)
    for make in (mlp, cnn, transformer, rnn)}
