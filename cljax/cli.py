"""``cljax run <config.py> [overrides]`` — the main job.

Examples::

    cljax run experiments/configs/split_mnist.py --method joint --seeds 3
    cljax run experiments/configs/split_mnist.py --method ewc --scenarios task \
        --sweep strength=1e2,1e3,1e4,1e5 --seeds 2
    cljax run experiments/configs/split_mnist.py --scenarios task,class --steps 500 \
        --set optimizer.learning_rate=3e-4 --workdir runs/quick
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from cljax.config import apply_assignment, load_config, parse_sweep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cljax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a CL experiment from a config file")
    run.add_argument("config", help="a Python file in experiments/configs/ with get_config()")
    run.add_argument("--method", help="CL method (none, joint, ...)")
    run.add_argument("--seeds", type=int, help="number of seeds, run as one vmapped program")
    run.add_argument("--seed", type=int, help="base seed")
    run.add_argument("--steps", type=int, help="training steps per task")
    run.add_argument("--batch-size", type=int, dest="batch_size")
    run.add_argument("--scenarios", help="comma-separated subset of task,domain,class")
    run.add_argument("--data-dir", dest="data_dir", help="tfds data dir (default: $TFDS_DATA_DIR)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config entry, dotted for nested keys (repeatable)")
    run.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...",
                     help="sweep a method hyperparameter; all values × seeds run as one vmapped "
                          "program (repeat for a grid)")
    run.add_argument("--analysis", choices=["flatness"],
                     help="after training: λ_max per task and the forgetting bound")
    run.add_argument("--workdir", help="output directory (default: runs/<config>_<method>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    for key in ("method", "seeds", "seed", "steps", "batch_size", "scenarios", "data_dir",
                "analysis"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    if args.steps is not None:
        config["epochs"] = None  # an explicit step count wins over epochs
    for assignment in args.set:
        apply_assignment(config, assignment)
    for spec in args.sweep:
        name, values = parse_sweep(spec)
        config.setdefault("sweep", {})[name] = values
    workdir = args.workdir or f"runs/{pathlib.Path(args.config).stem}_{config['method']}"

    from cljax.experiment import run_experiment  # deferred: imports JAX
    from cljax.report import write_outputs

    progress_factory = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        def progress_factory(name, total):
            return tqdm(total=total, unit="step", desc=f"{name}-IL", leave=False, file=sys.stderr)

    results = run_experiment(config, progress_factory=progress_factory,
                             on_scenario=lambda partial: write_outputs(partial, workdir))
    out = write_outputs(results, workdir)
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} in {out}")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
