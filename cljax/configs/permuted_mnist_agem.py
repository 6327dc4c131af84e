"""Permuted MNIST in A-GEM's protocol (Chaudhry et al. 2019, ICLR; code facebookresearch/agem,
``fc_permute_mnist.py`` run by ``replicate_results_iclr19.sh MNIST``).

Their protocol: 20 random pixel permutations, the first 3 tasks kept for cross-validating the
hyperparameters and the other 17 trained and reported; a single pass at batch 10 over each task's
training set, plain SGD, MLP 784-256-256 ("FC-S", weights from a normal truncated at 2σ with
σ = 0.1, biases 0.1), one shared 10-way head (the progressive network has one column and head per
task), every task's whole test set. The published values (Table 4 of the paper, ACC over the 17
tasks): A-GEM 89.1 ± 0.14, GEM 89.5, EWC 68.3, MAS 69.6, progressive networks 93.5, multitask
95.3.

The training set: the code of the paper's time (up to commit 5e84338, 2019-01-04) trains on all
of TensorFlow's MNIST training split (55,000 images, the other 5,000 being its validation split),
5,500 steps per task. The ``--examples-per-task 1000`` default of the repository's current code
came on 2019-02-26 with the ER paper (Chaudhry et al. 2019, "On tiny episodic memories"); set
``stream_options.max_train_per_task=1000`` and ``steps=100`` for that variant (RESULTS.md's
reduced table).

Here: 17 tasks, every one permuted (``stream_options.seed`` fixes the permutations, the same for
every seed of a run; theirs change with the run), the first 55,000 training images of MNIST for
every task (theirs: the last 55,000), 5,500 steps of 10 examples as one shuffled pass, each
example seen exactly once (``sampling="shuffled"``; ``"iid"`` draws with replacement), learning
rates and strengths from their script (the values their
cross-validation chose): 0.03 for fine-tuning and EWC (λ 10), 0.1 for SI (λ 0.1), MAS (λ 0.1),
A-GEM and progressive networks. The hyperparameters of methods their script does not run
(PackNet, HAT) are the methods' defaults at lr 0.1.

    cljax run permuted_mnist_agem --method pnn --scenarios task --seeds 5
    cljax run permuted_mnist_agem --method ewc --set optimizer.learning_rate=0.03 \\
        --set "hparams={'strength': 10.0}" --seeds 5
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "permuted",
        "stream_options": {"num_tasks": 17, "seed": 0, "pad_to": None, "permute_first": True,
                           "max_train_per_task": 55000},
        "scenarios": ["domain"],
        "model": {"kind": "mlp", "widths": [256, 256], "kernel_stddev": 0.1, "bias_init": 0.1},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "steps": 5500,
        "batch_size": 10,
        "sampling": "shuffled",
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
