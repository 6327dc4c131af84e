"""Split MNIST, protocol of van de Ven & Tolias 2019 ("Three scenarios for continual learning").

5 tasks of two digits (0/1, 2/3, ...), MLP 784-400-400 ReLU, Adam lr 1e-3 (β 0.9, 0.999),
2000 iterations per task, batch 128; Task-IL with a head per task, Domain-IL one 2-way head,
Class-IL one 10-way head. They report 20 seeds.

    cljax run split_mnist --method joint --seeds 3
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "split",
        "stream_options": {"tasks": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]},
        "scenarios": ["task", "domain", "class"],
        "model": {"kind": "mlp", "widths": [400, 400]},
        "optimizer": {"name": "adam", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999},
        "steps": 2000,
        "batch_size": 128,
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
