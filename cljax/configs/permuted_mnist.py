"""Permuted MNIST, protocol of van de Ven & Tolias 2019.

10 tasks; images zero-padded to 32×32 then permuted (every task, the first included), MLP
1024-1000-1000 ReLU initialised as PyTorch's ``nn.Linear`` (their code's: weights and biases
uniform on ±1/√fan_in), Adam lr 1e-4, 5000 iterations per task, batch 128. Task-IL and Domain-IL
(Class-IL with 100 outputs is available via --scenarios class). The initialisation matters in
Task-IL: with flax's LeCun-normal weights (3× the variance) and zero biases fine-tuning keeps
far more of the old tasks (RESULTS.md, "Permuted MNIST, van de Ven & Tolias 2019").

    cljax run permuted_mnist --method none --seeds 3
"""


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "permuted",
        "stream_options": {"num_tasks": 10, "seed": 0, "pad_to": 32, "permute_first": True},
        "scenarios": ["task", "domain"],
        "model": {"kind": "mlp", "widths": [1000, 1000], "kernel_init": "pytorch",
                  "bias_init": "pytorch"},
        "optimizer": {"name": "adam", "learning_rate": 1e-4, "b1": 0.9, "b2": 0.999},
        "steps": 5000,
        "batch_size": 128,
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 1,
        "seed": 0,
        "eval_chunk": 1000,
    }
