"""Permuted MNIST with 20 tasks, for RGO's own MNIST table (Liu & Liu 2022, Table 1).

Our references do not give RGO's exact MNIST network and schedule; this config uses the 20-task
protocol of A-GEM (Chaudhry et al. 2019), which RGO's comparisons follow in spirit: MLP 784-256-256
with one shared 10-way head (Domain-IL), plain SGD lr 0.1, batch 10, a single pass over each
task's 60,000 images (6,000 steps). RGO's α = 1 (``hparams.alpha``); RGO-2 is ``--method rgo2``.

    cljax run permuted_mnist_rgo --method rgo --seeds 5
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "permuted",
        "stream_options": {"num_tasks": 20, "seed": 0, "pad_to": None, "permute_first": True},
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
