"""Rotated MNIST with 20 tasks, for RGO's own MNIST table (Liu & Liu 2022, Table 1).

Task t rotates every image by t · 9° (0°, 9°, …, 171°: our choice, the references give no angles),
otherwise as ``permuted_mnist_rgo.py``: MLP 784-256-256, one shared head (Domain-IL), SGD lr 0.1,
batch 10, one pass per task.

    cljax run rotated_mnist_rgo --method rgo --seeds 5
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "rotated",
        "stream_options": {"angles": [9.0 * t for t in range(20)]},
        "scenarios": ["domain"],
        "model": {"kind": "mlp", "widths": [256, 256]},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "steps": 6000,
        "batch_size": 10,
        "method": "rgo",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
