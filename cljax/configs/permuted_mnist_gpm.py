"""Permuted MNIST in the protocol of GPM (Saha, Garg & Roy 2021; code sahagobinda/GPM,
``main_pmnist.py``), the table GPM, RGO, OGD, EWC, A-GEM and ER are compared on.

10 tasks, every task a fixed pixel permutation of the 28×28 images (no padding) standardised as
their data loader (``dataloader/pmnist.py``: mean 0.1307, std 0.3081, before permuting), MLP
784-100-100-10 without biases initialised as their PyTorch layers (``kernel_init="pytorch"``:
uniform on ±1/√fan_in) and one head shared by all tasks (Domain-IL), plain SGD lr 0.01,
batch 10, 5 epochs per task, each a shuffled pass as in their code (``sampling="shuffled"``);
the first 10 % of MNIST's training set is held out for validation (54,000 training images per
task: ``max_train_per_task``). GPM: thresholds 0.95 / 0.99 / 0.99,
300 examples per task build the representation matrices (the method's defaults). Published
(ACC % / BWT %, 5 runs): GPM 93.91 ± 0.16 / −3, EWC 89.97 / −4, A-GEM 83.56 / −14, ER_Res 87.24
/ −11, OGD 82.73 / −14, multitask 96.70.

    cljax run permuted_mnist_gpm --method gpm --seeds 5
    cljax run permuted_mnist_gpm --method rgo --seeds 5
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "permuted",
        "stream_options": {"num_tasks": 10, "seed": 0, "pad_to": None, "permute_first": True,
                           "max_train_per_task": 54000,
                           "normalisation": [[0.1307], [0.3081]]},
        "scenarios": ["domain"],
        "model": {"kind": "mlp", "widths": [100, 100], "use_bias": False,
                  "kernel_init": "pytorch"},
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
        "steps": 27000,
        "epochs": 5,
        "batch_size": 10,
        "sampling": "shuffled",
        "method": "gpm",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
