"""Flatness vs forgetting on rotated MNIST (Mirzadeh et al. 2020, "Understanding the role of
training regimes in continual learning"), two regimes in one run.

5 tasks; task t (1-based) rotates MNIST by (t−1)·10° − U(0, 10)°; MLP 784-100-100, one shared
10-way head (Domain-IL); SGD with momentum 0.8, learning rate decayed per task as lr·γ^t (floor
5e-5); 5 epochs per task (60,000 / batch steps). "naive": lr 0.01, batch 64, no decay, no
dropout. "stable": lr 0.1, γ 0.4, batch 16, dropout 0.25. After each run the report gives λ_max
of each task's test loss at θ*_t, the forgetting per task and the bound ½λ_max‖Δθ‖² per pair.

    cljax run flatness_rotated_mnist --seeds 3
"""
from cljax.data import mirzadeh_rotation_angles


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "stream": "rotated",
        "stream_options": {"angles": [float(a) for a in mirzadeh_rotation_angles(5, seed=0)]},
        "scenarios": ["domain"],
        "model": {"kind": "mlp", "widths": [100, 100], "dropout": 0.0},
        "optimizer": {"name": "sgd", "learning_rate": 0.01, "momentum": 0.8},
        "steps": 4690,
        "epochs": 5,
        "batch_size": 64,
        "method": "none",
        "method_options": {},
        "hparams": {},
        "sweep": {},
        "seeds": 3,
        "seed": 0,
        "eval_chunk": 1000,
        "analysis": "flatness",
        "analysis_options": {"max_seeds": 3, "num_iters": 50, "tol": 1e-3},
        "regimes": {
            "naive": {},
            "stable": {"optimizer": {"name": "sgd", "learning_rate": 0.1, "momentum": 0.8,
                                     "task_decay": 0.4, "min_learning_rate": 5e-5},
                       "batch_size": 16, "model.dropout": 0.25},
        },
    }
