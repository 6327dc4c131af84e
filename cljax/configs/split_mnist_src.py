"""Class-incremental Split MNIST in the protocol of Sleep Replay Consolidation (Tadros, Krishnan,
Ramyaa & Bazhenov 2022, Nature Communications 13:7742; code tmtadros/SleepReplayConsolidation,
``MNIST/run_class_task_summary.m``).

Their protocol: 5 tasks of two digits (0/1, 2/3, 4/5, 6/7, 8/9); the first 5,000 training
examples of each task; MLP 784-1200-1200-10 without biases, ReLU, dropout 0.25; SGD lr 0.1 with
momentum 0.5, batch 100, 2 epochs per task; one 10-way head (Class-IL), accuracy on the whole
10-class test set after the last task, 5 runs; a sleep phase after every task (``--method src``,
its defaults the MNIST values of their genetic search) against the same network without sleep
(``--method none``, their "Control").

Differences from their code: cross-entropy on softmax outputs (theirs: squared error on a ReLU
output layer); the weights start from flax's LeCun normal (theirs: uniform ±0.01); each epoch
is one shuffled pass.

    cljax run split_mnist_src --method src --seeds 5
    cljax run split_mnist_src --method none --seeds 5
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "split",
        "stream_options": {"tasks": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
                           "max_train_per_task": 5000},
        "scenarios": ["class"],
        "model": {"kind": "mlp", "widths": [1200, 1200], "use_bias": False, "dropout": 0.25},
        "optimizer": {"name": "sgd", "learning_rate": 0.1, "momentum": 0.5},
        "steps": 100,
        "epochs": 2,
        "batch_size": 100,
        "sampling": "shuffled",
        "method": "src",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
