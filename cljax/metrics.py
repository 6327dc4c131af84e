"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i, j]`` is the test accuracy on task j after training task i (0-based here; T tasks), and
``b[j]`` the accuracy of the random initialisation on task j (Lopez-Paz & Ranzato 2017, GEM;
Chaudhry et al. 2018, RWalk). Every function accepts a leading batch of runs: ``R[..., T, T]``.
The same functions apply to a loss matrix (per-task test loss), where "forgetting" is an increase:
pass ``kind="loss"``.

Inputs are checked, with a ``ValueError`` naming the argument: ``R`` must be a square
``[..., T, T]`` matrix with T ≥ 1, accuracies (``kind="accuracy"``, the default) are fractions
in [0, 1] (not %), losses (``kind="loss"``) finite and ≥ 0, and ``b`` has one finite value per
task (``[..., T]``) in the same range. NaN and inf are rejected everywhere: a diverged run's
accuracies are NaN in ``results.json``, so drop those runs first (:mod:`cljax.experiment`
passes only the runs that did not diverge).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

KINDS = ("accuracy", "loss")
"""What a matrix holds: accuracies (fractions in [0, 1]) or losses (≥ 0)."""


def _as_floats(x, name: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array of numbers; got {type(x).__name__} "
                         f"({e})") from e


def _check_values(x: np.ndarray, name: str, kind: str | None) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf (drop diverged runs before computing "
                         "metrics)")
    if x.size == 0 or kind is None:
        return
    if kind == "accuracy":
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"{name} holds accuracies outside [0, 1] (min {x.min():.4g}, max "
                             f"{x.max():.4g}); accuracies are fractions, not %; for a loss "
                             "matrix pass kind='loss'")
    elif kind == "loss":
        if x.min() < 0:
            raise ValueError(f"{name} holds negative losses (min {x.min():.4g}); losses must "
                             "be >= 0")
    else:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")


def _check_matrix(R, name: str = "R", kind: str | None = "accuracy") -> np.ndarray:
    R = _as_floats(R, name)
    if R.ndim < 2 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"{name} must be a square [..., T, T] matrix (row i = after task i, "
                         f"column j = task j); got shape {R.shape}")
    if R.shape[-1] == 0:
        raise ValueError(f"{name} must hold at least one task (T >= 1); got shape {R.shape}")
    _check_values(R, name, kind)
    return R


def _check_two_tasks(R: np.ndarray, what: str) -> None:
    if R.shape[-1] < 2:
        raise ValueError(f"{what} needs at least 2 tasks; got {R.shape[-1]}")


def average_accuracy(R: npt.ArrayLike, *, kind: str | None = "accuracy") -> np.ndarray:
    """ACC = (1/T) Σ_j R[T, j]: mean accuracy over all tasks after the last one."""
    R = _check_matrix(R, kind=kind)
    return R[..., -1, :].mean(-1)


def backward_transfer(R: npt.ArrayLike, *, kind: str | None = "accuracy") -> np.ndarray:
    """BWT = (1/(T−1)) Σ_{j<T} (R[T, j] − R[j, j]) (Lopez-Paz & Ranzato 2017, eq. 4).
    Negative values mean forgetting."""
    R = _check_matrix(R, kind=kind)
    _check_two_tasks(R, "backward_transfer")
    T = R.shape[-1]
    return (R[..., -1, :T - 1] - np.diagonal(R, axis1=-2, axis2=-1)[..., :T - 1]).mean(-1)


def forward_transfer(R: npt.ArrayLike, b: npt.ArrayLike, *, kind: str | None = "accuracy") -> np.ndarray:
    """FWT = (1/(T−1)) Σ_{j≥2} (R[j−1, j] − b_j) (Lopez-Paz & Ranzato 2017, eq. 5), with ``b`` the
    random initialisation's accuracy per task ``[..., T]``. In Task-IL with untrained heads it is
    ≈ 0 by construction."""
    R = _check_matrix(R, kind=kind)
    _check_two_tasks(R, "forward_transfer")
    b = _as_floats(b, "b")
    if b.shape != R.shape[:-1]:
        raise ValueError(f"b must have shape {R.shape[:-1]} (one baseline per task); got {b.shape}")
    _check_values(b, "b", kind)
    above = np.diagonal(R, offset=1, axis1=-2, axis2=-1)  # R[j-1, j], j = 1..T-1
    return (above - b[..., 1:]).mean(-1)


def forgetting_per_task(R: npt.ArrayLike, *, kind: str | None = "accuracy") -> np.ndarray:
    """f_j = max_{l<T} R[l, j] − R[T, j] for j < T (Chaudhry et al. 2018, eq. 6), ``[..., T−1]``.

    The max runs over every earlier row, including rows before task j was trained, as in the
    definition."""
    R = _check_matrix(R, kind=kind)
    _check_two_tasks(R, "forgetting")
    T = R.shape[-1]
    best = R[..., :T - 1, :T - 1].max(-2)
    return best - R[..., -1, :T - 1]


def forgetting(R: npt.ArrayLike, *, kind: str | None = "accuracy") -> np.ndarray:
    """Average forgetting (Chaudhry et al. 2018): mean over j < T of :func:`forgetting_per_task`."""
    return forgetting_per_task(R, kind=kind).mean(-1)


def forgetting_from_first(R: npt.ArrayLike, *, kind: str | None = "accuracy") -> np.ndarray:
    """Avalanche's forgetting: mean over j < T of R[j, j] − R[T, j] (accuracy right after
    learning task j minus final accuracy). Equals −BWT."""
    R = _check_matrix(R, kind=kind)
    _check_two_tasks(R, "forgetting_from_first")
    T = R.shape[-1]
    return (np.diagonal(R, axis1=-2, axis2=-1)[..., :T - 1] - R[..., -1, :T - 1]).mean(-1)


def plasticity(R: npt.ArrayLike, *, kind: str | None = "accuracy") -> np.ndarray:
    """Average accuracy on each task right after learning it: (1/T) Σ_j R[j, j]."""
    R = _check_matrix(R, kind=kind)
    return np.diagonal(R, axis1=-2, axis2=-1).mean(-1)


def mean_and_sem(values: npt.ArrayLike) -> tuple[float, float]:
    """Mean and standard error of the mean over runs (SEM = std (ddof=1) / √n; 0 for one run)."""
    v = _as_floats(values, "values").ravel()
    if v.size == 0:
        raise ValueError("mean_and_sem needs at least one value")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contains NaN or inf (drop diverged runs first)")
    sem = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), sem


def all_metrics(R: npt.ArrayLike, b: npt.ArrayLike | None = None, *, kind: str | None = None
                ) -> dict[str, np.ndarray]:
    """Every metric above for ``R[..., T, T]`` (and ``b`` for FWT), keyed by name.

    ``kind``: ``"accuracy"`` or ``"loss"`` (see the module docstring). ``None`` (the default,
    for callers that pass both kinds through one function) checks the shapes and that every
    value is finite, but not the range; pass ``kind`` to check it too.

    Example:
        >>> import numpy as np
        >>> from cljax.metrics import all_metrics
        >>> R = np.array([[0.9, 0.1],    # R[i, j]: accuracy on task j after training task i
        ...               [0.6, 0.8]])
        >>> {name: round(float(v), 4) for name, v in all_metrics(R, kind="accuracy").items()}
        {'acc': 0.7, 'plasticity': 0.85, 'bwt': -0.3, 'forgetting': 0.3, 'forgetting_from_first': 0.3}
    """
    R = _check_matrix(R, kind=kind)
    if b is not None:
        b = _as_floats(b, "b")
        if b.shape != R.shape[:-1]:
            raise ValueError(f"b must have shape {R.shape[:-1]} (one baseline per task); got "
                             f"{b.shape}")
        _check_values(b, "b", kind)
    out = {"acc": average_accuracy(R, kind=kind), "plasticity": plasticity(R, kind=kind)}
    if R.shape[-1] >= 2:
        out.update(bwt=backward_transfer(R, kind=kind), forgetting=forgetting(R, kind=kind),
                   forgetting_from_first=forgetting_from_first(R, kind=kind))
        if b is not None:
            out["fwt"] = forward_transfer(R, b, kind=kind)
    return out


__all__ = ["KINDS", "average_accuracy", "backward_transfer", "forward_transfer", "forgetting",
           "forgetting_per_task", "forgetting_from_first", "plasticity", "mean_and_sem",
           "all_metrics"]
