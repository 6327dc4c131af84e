"""Split CIFAR-10: 5 tasks of two classes, small CNN (two conv blocks of 32 and 64 channels, a
256-unit dense layer), Adam lr 1e-3, batch 128, 2000 iterations per task. Meant for a GPU; on this
CPU use fewer steps (``--steps 200``).

    cljax run split_cifar10 --method none --seeds 3
"""


def get_config() -> dict:
    return {
        "dataset": "cifar10",
        "stream": "split",
        "stream_options": {"tasks": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]},
        "scenarios": ["task", "class"],
        "model": {"kind": "cnn", "channels": [32, 64], "hidden": 256},
        "optimizer": {"name": "adam", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999},
        "steps": 2000,
        "batch_size": 128,
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 500,
    }
