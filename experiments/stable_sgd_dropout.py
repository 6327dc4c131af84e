"""Why stable SGD's published permuted-MNIST recipe does not train here: one task of MNIST, the
MLP 784-256-256 of Mirzadeh et al. 2020 with PyTorch's initialisation, batch 10, one shuffled
pass of 6,000 steps, in a plain optax loop (no cljax trainer), for three settings:

* their script's stable recipe for task 1: SGD lr 0.08 (0.1 · γ) with momentum 0.8, dropout 0.5;
* the same without momentum;
* the same at lr 0.02.

Prints the mean training loss of every 1,000 steps and the test accuracy after them (JSON lines).
RESULTS.md ("Permuted and rotated MNIST with 20 tasks, stable SGD's and MC-SGD's protocol")
quotes it.

    TFDS_DATA_DIR=../shared/tfds python experiments/stable_sgd_dropout.py
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.data import load_stream
from cljax.nn import MLP, as_model

SETTINGS = [(0.5, 0.8, 0.08), (0.5, 0.0, 0.08), (0.5, 0.8, 0.02)]   # dropout, momentum, lr


def main() -> None:
    s = load_stream("mnist", "permuted", num_tasks=1, seed=0, permute_first=False, pad_to=None)
    x = np.asarray(s.train.x[0]).reshape(60000, -1).astype(np.float32) / 255.0
    y = np.asarray(s.train.y[0])
    xt = np.asarray(s.test.x[0]).reshape(10000, -1).astype(np.float32) / 255.0
    yt = np.asarray(s.test.y[0])
    for dropout, momentum, lr in SETTINGS:
        model = as_model(MLP((256, 256), 10, dropout=dropout, kernel_init="pytorch"))
        params = model.init(jax.random.key(0), {"x": jnp.asarray(x[:1])})
        tx = optax.sgd(lr, momentum=momentum or None)
        opt = tx.init(params)

        def loss(p, xb, yb, k, model=model):
            z = model.train_logits_fn(p, {"x": xb}, k)
            return optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()

        @jax.jit
        def step(p, o, xb, yb, k, tx=tx, loss=loss):
            value, g = jax.value_and_grad(loss)(p, xb, yb, k)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, value

        order = np.random.default_rng(0).permutation(60000)
        losses = []
        for i in range(6000):
            b = order[i * 10:(i + 1) * 10]
            params, opt, value = step(params, opt, x[b], y[b], jax.random.key(i))
            losses.append(float(value))
            if i % 1000 == 999:
                acc = float((model.logits_fn(params, {"x": xt}).argmax(-1) == yt).mean())
                print(json.dumps({"dropout": dropout, "momentum": momentum, "lr": lr,
                                  "steps": i + 1, "mean_loss": round(np.mean(losses[-1000:]), 4),
                                  "test_accuracy": round(100 * acc, 2)}), flush=True)


if __name__ == "__main__":
    main()
