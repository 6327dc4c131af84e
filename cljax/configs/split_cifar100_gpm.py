"""10-split CIFAR-100 in the protocol of GPM (Saha et al. 2021, ``main_cifar100.py``).

10 tasks of 10 classes, one head per task (Task-IL), GPM's 5-layer AlexNet (``cljax.nn.AlexNet``:
conv 64@4×4, 128@3×3, 256@2×2, fc 2048, 2048, no biases, batch-statistics BatchNorm, dropout
0.2 / 0.5), batch 64, SGD lr 0.01; GPM thresholds 0.97 + 0.003·t for every layer, 125 examples
per representation matrix. Deviation: their schedule trains ≤ 200 epochs, halves the learning
rate after 6 epochs without validation improvement, stops below 1e-5 and restores the best
validation model; the trainer here runs a fixed number of epochs (``epochs``, 200 by default: set
it lower on a CPU and say so) with the constant learning rate. ``eval_chunk`` 1000 = a task's
test set (BatchNorm on batch statistics must not see padding). Published: GPM 72.48 ± 0.40 / BWT
−0.9, EWC 68.80, A-GEM 63.98, ER_Res 71.73, multitask 79.58.

    cljax run split_cifar100_gpm --method gpm --seeds 3
"""


def get_config() -> dict:
    return {
        "dataset": "cifar100",
        "stream": "split",
        "stream_options": {"tasks": [list(range(10 * t, 10 * t + 10)) for t in range(10)]},
        "scenarios": ["task"],
        "model": {"kind": "alexnet"},
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
        "steps": 1,
        "epochs": 200,
        "batch_size": 64,
        "method": "gpm",
        "method_options": {"thresholds": [0.97], "threshold_increment": 0.003,
                           "num_examples": 125},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
