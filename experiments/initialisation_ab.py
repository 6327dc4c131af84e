"""Issue 27: does the initialisation move a registered bench entry? Runs the entry's runs (its
config, hyperparameters and per-seed tasks, as ``cljax bench`` builds them) twice — as
registered and with the MLP initialised as PyTorch's ``nn.Linear`` (``model.kernel_init`` and
``model.bias_init`` ``"pytorch"``) — and prints ACC per seed, both means ± SEM and the paired
difference (the same seeds and tasks) per scenario. An entry whose hyperparameter is chosen on
validation data takes ``--hparams`` (e.g. the value its selection chose) for both arms.

    python experiments/initialisation_ab.py hsu2018_split_mnist ewc --scenarios task \
        --hparams strength=1e5 [--out runs/initialisation_ab/hsu2018_split_mnist_ewc.json]
"""
import argparse
import copy
import json
import pathlib

import numpy as np

from cljax import metrics
from cljax.bench.protocol import entry_runs
from cljax.bench.registry import PROTOCOLS
from cljax.experiment import run_experiment, validate_config

TORCH_INIT = {"kernel_init": "pytorch", "bias_init": "pytorch"}


def _acc(config: dict) -> dict[str, list[float]]:
    res = run_experiment(validate_config(config), log=lambda s: None)
    return {sc: [100 * metrics.average_accuracy(m) for m in np.asarray(r["accuracy"])]
            for sc, r in res["scenarios"].items()}


def _summary(v: np.ndarray) -> str:
    return "{:.2f} ± {:.2f}".format(*metrics.mean_and_sem(v))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("protocol", choices=sorted(PROTOCOLS))
    ap.add_argument("entry")
    ap.add_argument("--scenarios", default=None, help="comma-separated (default: the entry's)")
    ap.add_argument("--hparams", action="append", default=[], metavar="NAME=VALUE",
                    help="fix a hyperparameter (needed for an entry chosen on validation data)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    protocol = PROTOCOLS[args.protocol]
    entry = next((e for e in protocol.entries if e.key == args.entry), None)
    if entry is None:
        raise SystemExit(f"{args.protocol} has no entry {args.entry!r}; its entries: "
                         f"{[e.key for e in protocol.entries]}")
    fixed = {k: float(v) for k, v in (h.split("=", 1) for h in args.hparams)}
    if entry.grid and set(fixed) != set(entry.grid):
        raise SystemExit(f"{args.entry} chooses {sorted(entry.grid)} on validation data: give "
                         f"each with --hparams NAME=VALUE")
    scenarios = (args.scenarios.split(",") if args.scenarios
                 else list(protocol.entry_scenarios(entry)))
    chosen = {s: dict(fixed) for s in protocol.entry_scenarios(entry)} if entry.grid else None
    runs = entry_runs(protocol, entry, seeds=protocol.seeds, chosen=chosen)
    arms: dict[str, dict[str, list[float]]] = {"registered": {}, "pytorch_init": {}}
    for run in runs:
        for arm in arms:
            cfg = copy.deepcopy(run.config)
            cfg["scenarios"] = scenarios
            if arm == "pytorch_init":
                cfg["model"] = {**cfg["model"], **TORCH_INIT}
            for sc, accs in _acc(cfg).items():
                arms[arm].setdefault(sc, []).extend(accs)
    out = {"written_by": "cljax experiments/initialisation_ab.py", "protocol": args.protocol,
           "entry": args.entry, "hparams": fixed, "scenarios": {}}
    for sc in scenarios:
        a, b = np.asarray(arms["registered"][sc]), np.asarray(arms["pytorch_init"][sc])
        d_mean, d_sem = metrics.mean_and_sem(b - a)
        out["scenarios"][sc] = {"registered": a.round(2).tolist(),
                                "pytorch_init": b.round(2).tolist(),
                                "paired_difference": [d_mean, d_sem]}
        print(f"{sc}: registered {_summary(a)}, PyTorch's initialisation {_summary(b)}, paired "
              f"{d_mean:+.2f} ± {d_sem:.2f}", flush=True)
    path = pathlib.Path(args.out or f"runs/initialisation_ab/{args.protocol}_{args.entry}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
