"""Rotated MNIST with 20 tasks, the second benchmark of RGO's Table 1 (Liu & Liu 2022).

Chaudhry et al. 2020's rotated MNIST (arslan-chaudhry/orthog_subspace, ``fc_rotate_mnist.py``,
``construct_rotate_mnist(20, 0, 180)``): task t rotates every image by an angle drawn uniformly in
[9t, 9t + 9)° with ``random.seed(t · 1234)`` — the same 20 angles in every run (``ANGLES``) —
otherwise as ``permuted_mnist_rgo.py``: 10,000 training images per task in one shuffled pass at
batch 10 (1,000 steps), SGD lr 0.1, MLP 784-256-256 with orthogonal weights and biases 0.1, one
shared head (Domain-IL). Their images are rotated with PIL on floats, ours with
``scipy.ndimage.rotate`` (linear interpolation).

    cljax run rotated_mnist_rgo --method rgo --seeds 5
    cljax bench rgo2022_rotated_mnist
"""

import random

ANGLES = [random.Random(t * 1234).uniform(9.0 * t, 9.0 * (t + 1)) for t in range(20)]
"""Their angles (7.60°, 17.70°, 20.50°, …, 178.44°): Python's ``random`` seeded by t · 1234."""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "rotated",
        "stream_options": {"angles": ANGLES, "max_train_per_task": 10000},
        "scenarios": ["domain"],
        "model": {"kind": "mlp", "widths": [256, 256], "kernel_init": "orthogonal",
                  "bias_init": 0.1},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "steps": 1000,
        "batch_size": 10,
        "sampling": "shuffled",
        "method": "rgo",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
