"""Issue 27: is the Split MNIST EWC Task-IL change (98.59 over seeds 0-1 with runs looped, 99.12
with the runs vmapped) seed noise or a shift? Runs the same N seeds of the same config both ways
(``run_stream(runs="map")``: each run computed as a lone run; ``runs="vmap"``: one batched
program) and prints per-seed ACC, both means ± SEM, the paired difference with its 95 % interval.

    python experiments/ewc_seed_shift.py [--seeds 10] [--strength 1e4] [--out runs/ewc_seed_shift.json]
"""
import argparse
import json
import pathlib

import jax
import numpy as np
from scipy import stats

from cljax import metrics
from cljax.config import load_config
from cljax.experiment import build_scenario, load_experiment_stream, plan_runs, validate_config
from cljax.training import run_stream


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--strength", type=float, default=1e4)
    ap.add_argument("--out", default="runs/ewc_seed_shift.json")
    args = ap.parse_args()
    cfg = load_config("split_mnist")
    cfg.update(method="ewc", hparams={"strength": args.strength}, seeds=args.seeds,
               scenarios=["task"])
    cfg = validate_config(cfg)
    stream, _ = load_experiment_stream(cfg)
    setup = build_scenario(cfg, stream, "task")
    plan = plan_runs(cfg, setup.method)
    acc = {}
    for runs in ("map", "vmap"):
        res = run_stream(setup.trainer, setup.data, num_steps=cfg["steps"], keys=plan.keys,
                         hparams=plan.hparams, runs=runs, on_nonfinite="mark")
        acc[runs] = np.array([metrics.average_accuracy(m) for m in np.asarray(res.accuracy)])
        print(runs, np.round(100 * acc[runs], 2).tolist(), flush=True)
    n = args.seeds
    diff = acc["vmap"] - acc["map"]
    half = stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n)
    summary = {
        "config": "split_mnist", "method": "ewc", "strength": args.strength, "seeds": n,
        "jax": jax.__version__, "backend": jax.default_backend(),
        "acc_map": acc["map"].tolist(), "acc_vmap": acc["vmap"].tolist(),
        "mean_map": float(acc["map"].mean()), "sem_map": float(stats.sem(acc["map"])),
        "mean_vmap": float(acc["vmap"].mean()), "sem_vmap": float(stats.sem(acc["vmap"])),
        "paired_diff_mean": float(diff.mean()), "paired_diff_ci95": float(half),
        "welch_p": float(stats.ttest_ind(acc["vmap"], acc["map"], equal_var=False).pvalue),
        "produced_by": "cljax experiments/ewc_seed_shift.py"}
    print(json.dumps(summary, indent=1))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
