"""``cljax run <config> [overrides]`` — the main job; ``cljax bench <protocol>`` runs a paper's
table and writes its leaderboard (:mod:`cljax.bench`); ``cljax configs`` and ``cljax methods``
list what they can run; ``cljax progress [DIR]`` says where the runs under a directory stand
(:mod:`cljax.progress`: finished, or their newest checkpoint's task, step and accuracies so
far, and whether a process runs in them), touching nothing.

``<config>`` is the name of a config shipped with cljax (``cljax configs`` lists them) or the
path of a Python file of your own defining ``get_config()``. Examples::

    cljax run split_mnist --method joint --seeds 3
    cljax run split_mnist --method ewc --scenarios task \
        --sweep strength=1e2,1e3,1e4,1e5 --seeds 2
    cljax run split_mnist --scenarios task,class --steps 500 \
        --set optimizer.learning_rate=3e-4 --workdir runs/quick
    cljax run split_mnist --method ewc --seeds 8 --devices 4

``--devices N`` shards the runs over the first N devices (default: all; see the guide
docs/guides/devices.md, "Several devices and hosts").

Before any data is loaded the config (with every override) is validated — the method's
hyperparameter domains (swept values included), its scenarios and its own check of the run —
and the work directory is created, checked and locked (:mod:`cljax.workdir`). After the data is
loaded and before anything is compiled, the state of the runs is sized and a run that would not
fit (the device, ``--max-state-bytes``) is refused. An error the user can fix — a bad config
path, ``--set`` / ``--sweep``, an unknown method, model or optimizer, an invalid value, missing or
corrupt data, an unusable or busy work directory, a checkpoint of another run, a state too large
— prints one line ``cljax: error: …`` naming the option and what it expects, and exits with
status 2 (``--debug`` shows the traceback instead). Exit status: 0 done; 2 such an error
(argparse's usage errors too); 3 every run diverged (the results are still written); 130
interrupted by SIGINT or SIGTERM (a finished scenario's results are written before the
interrupt is honoured; the message says which are, and what of the unfinished scenario is
checkpointed in ``<workdir>/checkpoints``: rerun the same command with ``--resume``).
"""
from __future__ import annotations

import argparse
import ast
import copy
import functools
import pathlib
import signal
import sys
import textwrap
import traceback
from collections.abc import Callable
from typing import NamedTuple

from cljax.config import (
    apply_assignment,
    apply_override,
    config_file,
    config_names,
    config_summary,
    load_config,
    parse_sweep,
    parse_value,
    steps_win_over_epochs,
)
from cljax.regimes import regime_settings

EXIT_USAGE = 2
EXIT_ALL_DIVERGED = 3
EXIT_INTERRUPTED = 130   # 128 + SIGINT, the shell's convention


def _terminate(signum, frame):
    """SIGTERM handler: raise KeyboardInterrupt, so a terminated run checkpoints and stops as
    one interrupted with Ctrl-C does."""
    raise KeyboardInterrupt


class UsageError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


_BYTE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def _byte_count(text: str) -> int:
    """A positive number of bytes: an integer or a number with a binary unit (``4e9``,
    ``512M``, ``16GiB``, ``2G``)."""
    raw = text.strip().lower().replace("ib", "").replace("b", "")
    unit = raw[-1:] if raw[-1:] in "kmgt" else ""
    try:
        value = float(raw[:len(raw) - len(unit)]) * _BYTE_UNITS[unit]
    except ValueError:
        value = float("nan")
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes (e.g. 4e9, 512M, "
                                         f"16G); got {text!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``cljax`` command's parser: ``run``, ``bench``, ``progress``, ``configs``,
    ``methods`` and ``--version``."""
    from cljax import __version__
    from cljax.methods import METHODS

    parser = argparse.ArgumentParser(prog="cljax", description="Continual learning in JAX: "
                                     "run a published protocol with any method.")
    parser.add_argument("--version", action="version", version=f"cljax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("configs", help="list the configs shipped with cljax and their protocols")
    sub.add_parser("methods", help="list the methods: what each is, its options, "
                                   "hyperparameters (defaults and domains) and scenarios")
    run = sub.add_parser("run", help="run a CL experiment from a config")
    run.add_argument("config", help="a shipped config's name (cljax configs lists them, e.g. "
                                    "split_mnist) or a Python file defining get_config()")
    run.add_argument("--method", metavar="NAME",
                     help=f"CL method (cljax methods describes them): {', '.join(METHODS)}")
    run.add_argument("--seeds", type=_positive_int,
                     help="number of seeds, run as one vmapped program")
    run.add_argument("--seed", type=int, help="base seed")
    run.add_argument("--steps", type=_positive_int, help="training steps per task")
    run.add_argument("--batch-size", type=_positive_int, dest="batch_size")
    run.add_argument("--scenarios", help="comma-separated subset of task,domain,class")
    run.add_argument("--data-dir", dest="data_dir", help="tfds data dir (default: $TFDS_DATA_DIR)")
    run.add_argument("--regime", metavar="NAME",
                     help="train under a named regime (applied first, so the other options "
                          "win): stable_sgd (Mirzadeh et al. 2020: lr decayed per task, batch "
                          "10, dropout 0.25) or naive_sgd; cljax.regimes documents them")
    run.add_argument("--regime-option", action="append", default=[], dest="regime_option",
                     metavar="KEY=VALUE", help="an option of --regime, e.g. decay=0.5 "
                                               "(repeatable)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config entry, dotted for nested keys (repeatable)")
    run.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...",
                     help="sweep a method hyperparameter; all values × seeds run as one vmapped "
                          "program (one --sweep per name; repeat for a grid)")
    run.add_argument("--analysis", choices=["flatness"],
                     help="after training: λ_max per task and the forgetting bound")
    run.add_argument("--workdir", help="output directory (default: runs/<config>_<method>); "
                                       "must be empty, or see --resume / --overwrite")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run saved in --workdir (same config and options) from "
                            "its last complete checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="first remove what the earlier cljax run in --workdir wrote "
                            "(nothing else: other files there are kept)")
    run.add_argument("--checkpoint-every", type=_positive_int, dest="checkpoint_every",
                     metavar="STEPS", help="also checkpoint every STEPS steps within a task "
                                           "(default: after every task only); rounded down to "
                                           "a divisor of the steps per task (e.g. 40 of 100 "
                                           "steps: 25), and the log says the value used")
    run.add_argument("--max-state-bytes", type=_byte_count, dest="max_state_bytes",
                     metavar="BYTES", help="refuse a run whose state (model, optimizer and "
                     "method state of every run on a device) is estimated above BYTES (e.g. "
                     "4e9, 512M, 16G) before anything is compiled; the device's own memory is "
                     "always checked (config key max_state_bytes)")
    run.add_argument("--devices", type=_positive_int, metavar="N",
                     help="shard the runs (seeds × sweep points) over the first N devices "
                          "(default: all local devices; 1: the one-device path)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-tensorboard", action="store_true", dest="no_tensorboard",
                     help="no TensorBoard event files (written to <workdir>/tensorboard when "
                          "tensorboardX is installed)")
    run.add_argument("--debug", action="store_true",
                     help="on an error, show the full traceback instead of one line")
    _add_bench_parser(sub)
    progress = sub.add_parser(
        "progress", help="where the runs under a directory stand: finished, or their newest "
                         "checkpoint's task, step and accuracies so far (nothing is touched)")
    progress.add_argument("directories", nargs="*", default=["runs"], metavar="DIR",
                          help="a run's or a benchmark's --workdir, or a folder of them "
                               "(default: runs)")
    progress.add_argument("--json", action="store_true",
                          help="print strict JSON (a list, one object per scenario) instead")
    return parser


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench", help="run a published protocol's methods and write its leaderboard (ours "
                      "beside the paper's values)")
    bench.add_argument("protocol", nargs="?", help="a registered protocol (--list names them)")
    bench.add_argument("--list", action="store_true", help="list the registered protocols")
    bench.add_argument("--methods", default="all", metavar="A,B,...|all",
                       help="entries (or methods) of the protocol to run (default: all)")
    bench.add_argument("--seeds", type=_positive_int,
                       help="seeds per run (default: the protocol's)")
    bench.add_argument("--workdir", help="output directory (default: runs/bench/<protocol>)")
    bench.add_argument("--resume", action="store_true",
                       help="continue the benchmark in --workdir: finished runs are kept, an "
                            "interrupted one resumes from its checkpoints")
    bench.add_argument("--no-run", action="store_true", dest="no_run",
                       help="run nothing: write the leaderboard of what --workdir holds")
    bench.add_argument("--merge-from", action="append", default=[], dest="merge_from",
                       metavar="DIR",
                       help="first copy into --workdir the runs finished in DIR, another "
                            "directory of this benchmark (e.g. methods run in a second process "
                            "or on another machine), with their provenance (repeatable)")
    bench.add_argument("--results-md", dest="results_md", metavar="FILE",
                       help="also write the leaderboard into FILE (e.g. RESULTS.md) between its "
                            "markers for this protocol")
    bench.add_argument("--steps", type=_positive_int,
                       help="steps per task (a deviation: the leaderboard says so)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config entry of every run (a deviation: the leaderboard "
                            "says so; repeatable)")
    bench.add_argument("--checkpoint-every", type=_positive_int, dest="checkpoint_every",
                       metavar="STEPS", help="also checkpoint every STEPS steps within a task")
    bench.add_argument("--devices", type=_positive_int, metavar="N",
                       help="shard each run's seeds over the first N devices")
    bench.add_argument("--seed-runs", choices=("together", "separate"), dest="seed_runs",
                       help="'together': each entry's seeds vmapped in one run; 'separate': one "
                            "run per seed (<entry>_seed<s>, pooled into one row), to split over "
                            "processes, machines or sittings with --runs (default: separate "
                            "where each seed draws its own tasks, else together)")
    bench.add_argument("--runs", metavar="NAME,...",
                       help="run only these runs of the selected methods (names as the "
                            "leaderboard's to-do line lists them, e.g. rgo_seed1,rgo_seed3); "
                            "the others stay to do")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--debug", action="store_true",
                       help="on an error, show the full traceback instead of one line")


# --------------------------------------------------------------------------------------------
# Errors as one line
# --------------------------------------------------------------------------------------------

def _message(e: BaseException, drop_prefix: str | None = None) -> str:
    """The message of ``e`` on one line (a KeyError's without its quotes), without a leading
    ``drop_prefix`` (what the label in front of it already says)."""
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]
    else:
        text = str(e)
    text = " ".join(text.split()) or type(e).__name__
    if drop_prefix and text.startswith(drop_prefix) and len(text) > len(drop_prefix):
        text = text[len(drop_prefix):]
    return text


# Exceptions of the run stage shown as one line: missing or corrupt data (the message says how
# to fix it), and a config the validation could not see through or a file that could not be
# written (with a pointer to --debug, in case it is a bug). Anything else is a bug and keeps its
# traceback.
def _data_errors() -> tuple[type[BaseException], ...]:
    from cljax.data.sources import CorruptDataError

    return (CorruptDataError, FileNotFoundError)


_RUN_STAGE_ERRORS = (ValueError, TypeError, KeyError, OSError)


# --------------------------------------------------------------------------------------------
# Config: file, options, overrides — validated, each error blamed on what caused it
# --------------------------------------------------------------------------------------------

_DIRECT_OPTIONS = (("method", "--method"), ("seeds", "--seeds"), ("seed", "--seed"),
                   ("steps", "--steps"), ("batch_size", "--batch-size"),
                   ("scenarios", "--scenarios"), ("data_dir", "--data-dir"),
                   ("analysis", "--analysis"), ("max_state_bytes", "--max-state-bytes"))


class Override(NamedTuple):
    """One option that changes the config."""

    label: str                    # names the option in messages, e.g. "--set steps=5"
    apply: Callable[[dict], None]  # applies it to a config in place
    echo: str | None = None       # how its errors' messages start when they repeat the label


def _load(path: str) -> dict:
    try:
        config_file(path)
    except FileNotFoundError as e:
        raise UsageError(f"config {path!r} is neither a file nor a shipped config's name; "
                         "expected a Python file defining get_config() or one of "
                         f"{', '.join(config_names())} (cljax configs)") from e
    except OSError as e:   # e.g. a name longer than the file system allows
        raise UsageError(f"config {path!r}: {e.strerror or e}; expected a Python file defining "
                         "get_config() or a shipped config's name (cljax configs)") from e
    try:
        config = load_config(path)
    except Exception as e:  # the user's code: any error in it is theirs
        raise UsageError(f"config {path!r} failed to load: {type(e).__name__}: "
                         f"{_message(e)}") from e
    if not isinstance(config, dict):
        raise UsageError(f"config {path!r}: get_config() must return a dict; got "
                         f"{type(config).__name__}")
    return config


def _set(cfg: dict, assignment: str) -> None:
    """``--set key=value``; a value that opens a list / dict / tuple must be a whole Python
    literal (else the config would silently get the text as a string)."""
    text = assignment.split("=", 1)[1].strip() if "=" in assignment else ""
    if text[:1] in ("[", "{", "("):
        try:
            ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{text!r} is not a Python literal ({type(e).__name__}: {e}); "
                             "write numbers, quoted strings, lists and dicts, e.g. "
                             "hparams=\"{'strength': 1e3}\"") from e
    apply_assignment(cfg, assignment)


def _overrides(args: argparse.Namespace) -> list[Override]:
    """Every option that changes the config, in the order applied, each with its label."""
    out: list[Override] = []
    regime, options = getattr(args, "regime", None), getattr(args, "regime_option", [])
    if options and regime is None:
        raise UsageError(f"--regime-option {options[0]}: give the regime with --regime NAME")
    if regime is not None:
        label = " ".join([f"--regime {regime}"] + [f"--regime-option {o}" for o in options])
        for o in options:
            if "=" not in o:
                raise UsageError(f"--regime-option {o}: expected KEY=VALUE, e.g. decay=0.5")
        chosen = {k.strip(): parse_value(v) for k, v in (o.split("=", 1) for o in options)}

        def apply_named(cfg, regime=regime, chosen=chosen):
            for dotted, value in regime_settings(regime, **chosen).items():
                apply_override(cfg, dotted, value)
        out.append(Override(label, apply_named))
    for key, option in _DIRECT_OPTIONS:
        value = getattr(args, key)
        if value is None:
            continue

        def apply(cfg, key=key, value=value):
            cfg[key] = value
            if key == "steps":
                steps_win_over_epochs(cfg)
        out.append(Override(f"{option} {value}", apply))
    for assignment in args.set:
        # apply_override's messages start with the key, which the label already names
        out.append(Override(f"--set {assignment}", functools.partial(_set, assignment=assignment),
                            echo=assignment.split("=", 1)[0].strip() + ": "))
    swept: dict[str, str] = {}
    for spec in args.sweep:
        label = f"--sweep {spec}"
        try:
            name, values = parse_sweep(spec)
        except ValueError as e:
            prefix = f"--sweep {spec.split('=', 1)[0].strip()}: "
            raise UsageError(f"{label}: {_message(e, prefix)}") from e
        if name in swept:
            raise UsageError(
                f"{label}: {name!r} is already swept by --sweep {swept[name]}; give each "
                f"hyperparameter one --sweep with all its values, e.g. --sweep "
                f"{name}=v1,v2,v3 (repeat --sweep only for different names, to make a grid)")
        swept[name] = spec

        def apply(cfg, name=name, values=values):
            sweep = cfg.get("sweep")
            cfg["sweep"] = {**(sweep if isinstance(sweep, dict) else {}), name: values}
        out.append(Override(label, apply))
    return out


def _apply(base: dict, overrides: list[Override], skip: int | None = None) -> dict:
    cfg = copy.deepcopy(base)
    for i, o in enumerate(overrides):
        if i == skip:
            continue
        try:
            o.apply(cfg)
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(f"{o.label}: {_message(e, o.echo)}") from e
    return cfg


def _validate(cfg: dict) -> dict:
    """``validate_config`` of the config and of each of its regimes (so that a bad regime
    override fails now, not after the first regime has trained)."""
    from cljax.config import apply_override
    from cljax.experiment import validate_config

    valid = validate_config(cfg)
    for regime, overrides in (valid.get("regimes") or {}).items():
        sub = copy.deepcopy({k: v for k, v in valid.items() if k != "regimes"})
        try:
            for dotted, value in overrides.items():
                apply_override(sub, dotted, value)
            validate_config(sub)
        except Exception as e:
            raise ValueError(f"regime {regime!r} ({overrides}): {_message(e)}") from e
    return valid


def _error_of(cfg: dict) -> str | None:
    try:
        _validate(cfg)
    except Exception as e:
        return _message(e)
    return None


def _blame(base: dict, overrides: list[Override], error: str, path: str) -> str:
    """What to name in the message of a validation ``error``: the config file, or the option
    that caused it (the one that alone reproduces it, else the one without which the config is
    valid), or the combination of options."""
    if _error_of(base) == error:
        return f"config {path!r}"
    for o in overrides:
        try:
            if _error_of(_apply(base, [o])) == error:
                return o.label
        except UsageError:
            pass
    for i, o in enumerate(overrides):
        try:
            if _error_of(_apply(base, overrides, skip=i)) is None:
                return o.label
        except UsageError:
            pass
    return "the options " + ", ".join(o.label for o in overrides)


def resolve_config(args: argparse.Namespace) -> tuple[dict, dict]:
    """(the config with every override applied, its validated normalised copy); a
    :class:`UsageError` naming the config file or the option at fault otherwise."""
    base = _load(args.config)
    overrides = _overrides(args)
    config = _apply(base, overrides)
    try:
        return config, _validate(config)
    except Exception as e:  # validation builds the user's model / optimizer: any error is theirs
        message = _message(e)
        raise UsageError(f"{_blame(base, overrides, message, args.config)}: {message}") from e


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

def _run_counts(results: dict) -> tuple[int, int]:
    """(runs, diverged runs) over every scenario, sweep point and regime of ``results``."""
    if "regimes" in results:
        counts = [_run_counts(sub) for sub in results["regimes"].values()]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    seeds = int(results["config"]["seeds"])
    total = gone = 0
    for sc in results.get("scenarios", {}).values():
        for point in sc.get("sweep") or [sc]:
            total += seeds
            gone += len(point.get("diverged") or [])
    return total, gone


def _interrupted(finished: list[str], checkpoints: list, workdir: pathlib.Path,
                 resumed: bool) -> str:
    """The message of an interrupted run: what is finished and what checkpointed — only what
    is."""
    parts = []
    if finished:
        parts.append(f"the finished scenarios' results ({', '.join(finished)}) are in {workdir}")
    for name, where, step in checkpoints:
        parts.append(f"the unfinished {name} scenario's state is checkpointed in {where} "
                     f"(after {step} steps of its stream)")
    if parts:
        return ("cljax: interrupted: " + "; ".join(parts)
                + "; run the same command with --resume to continue")
    if resumed:
        return (f"cljax: interrupted before this run finished or checkpointed anything; the "
                f"earlier run in {workdir} is as it was: run the same command with --resume")
    return ("cljax: interrupted before anything was finished or checkpointed: nothing to "
            "resume; run the command again")


def _scenario_names(results: dict | None) -> list[str]:
    if not results:
        return []
    if "regimes" in results:
        return [f"{r}/{n}" for r, sub in results["regimes"].items()
                for n in sub.get("scenarios", {})]
    return list(results.get("scenarios", {}))


def _run(args: argparse.Namespace) -> int:
    config, valid = resolve_config(args)
    from cljax.experiment import run_identity
    from cljax.workdir import prepare_workdir

    if args.workdir is not None and not args.workdir.strip():
        raise UsageError(f"--workdir {args.workdir!r} is empty; give a directory path (default: "
                         f"runs/<config>_<method>)")
    workdir = args.workdir or f"runs/{pathlib.Path(args.config).stem}_{valid['method']}"
    prepared = prepare_workdir(workdir, valid, resume=args.resume, overwrite=args.overwrite,
                               identity=run_identity(valid))
    try:     # the work directory stays locked until the run ends
        return _run_in(args, config, prepared["path"], resume=prepared["resume"])
    finally:
        prepared["lock"].release()


def _run_in(args: argparse.Namespace, config: dict, workdir: pathlib.Path, *,
            resume: bool) -> int:
    """The run stage, in the prepared and locked work directory."""
    from cljax import events
    from cljax.checkpoint import CheckpointError
    from cljax.experiment import StateSizeError, deferred_interrupts, run_experiment
    from cljax.report import write_outputs
    from cljax.workdir import CHECKPOINT_DIR, read_marker, record_outputs, write_recording

    if args.resume and not resume:
        print(f"nothing to resume in {workdir}: starting a fresh run", file=sys.stderr)
    progress_factory = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        def progress_factory(name, total):
            return tqdm(total=total, unit="step", desc=f"{name}-IL", leave=False, file=sys.stderr)

    events_dir = None if args.no_tensorboard or not events.available() else \
        str(workdir / "tensorboard")
    record_outputs(workdir, [CHECKPOINT_DIR] + (["tensorboard"] if events_dir else []))

    def write(results):   # every entry it creates is recorded in the work directory's marker
        return write_recording(workdir, lambda: write_outputs(results, workdir))

    results = None
    previous = signal.signal(signal.SIGTERM, _terminate)   # SIGTERM: like SIGINT (Ctrl-C)
    try:
        results = run_experiment(config, progress_factory=progress_factory, on_scenario=write,
                                 checkpoint_dir=str(workdir / CHECKPOINT_DIR), resume=resume,
                                 checkpoint_every=args.checkpoint_every,
                                 devices=args.devices, events_dir=events_dir)
        with deferred_interrupts():
            out = write(results)
    except KeyboardInterrupt as e:   # RunInterrupted says what; after it, all is finished
        finished = getattr(e, "finished", None)
        print(_interrupted(_scenario_names(results) if finished is None else finished,
                           getattr(e, "checkpoints", []), workdir, resume), file=sys.stderr)
        return EXIT_INTERRUPTED
    except _data_errors() + (StateSizeError, CheckpointError) as e:
        raise UsageError(_message(e)) from e
    except _RUN_STAGE_ERRORS as e:
        raise UsageError(f"{_message(e)} (--debug shows the traceback)") from e
    finally:
        signal.signal(signal.SIGTERM, previous)
    wrote = (read_marker(out) or {"wrote": []})["wrote"]                 # what this run wrote
    names = sorted(n + ("/" if (out / n).is_dir() else "") for n in wrote
                   if not n.startswith(".") and (out / n).exists())
    print(f"wrote {', '.join(names)} in {out}")
    print((out / "report.md").read_text())
    total, gone = _run_counts(results)
    if total and gone == total:
        print(f"cljax: error: every run diverged ({gone}/{total}); see {out / 'report.md'}: "
              "lower the learning rate or the method's strength", file=sys.stderr)
        return EXIT_ALL_DIVERGED
    return 0


def _wrapped(text: str, indent: str = "    ") -> str:
    return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent)


def list_configs() -> str:
    """``cljax configs``: each shipped config's name and protocol (its docstring's first
    paragraph)."""
    return "\n".join(f"{name}\n{_wrapped(config_summary(name))}" for name in config_names())


def _format_number(value: float) -> str:
    return "unset" if value != value else f"{value:g}"


def list_methods() -> str:
    """``cljax methods``: each method's summary, static options (``method_options``) with their
    defaults, hyperparameters (``hparams`` / ``--sweep``) with their defaults and domains, and
    the scenarios it supports."""
    from cljax.methods import METHODS, describe_method

    blocks = []
    for name in METHODS:
        d = describe_method(name)
        lines = [f"{name} — scenarios {', '.join(d.scenarios)}", _wrapped(d.summary)]
        if d.hparams:
            lines.append(_wrapped("hparams: " + ", ".join(
                f"{h}={_format_number(v)} ({domain})" for h, (v, domain) in d.hparams.items())))
        if d.options:
            lines.append(_wrapped("method_options: " + ", ".join(
                f"{k}={v!r}" for k, v in d.options.items())))
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _bench_overrides(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """The dotted overrides of ``--steps`` / ``--set`` and their labels (the deviations)."""
    from cljax.config import parse_value

    overrides: dict = {}
    labels = []
    if args.steps is not None:
        overrides["steps"] = args.steps
        labels.append(f"--steps {args.steps}")
    for assignment in args.set:
        if "=" not in assignment:
            raise UsageError(f"--set {assignment}: expected key=value")
        key, value = assignment.split("=", 1)
        overrides[key.strip()] = parse_value(value)
        labels.append(f"--set {assignment}")
    return overrides, labels


def _bench(args: argparse.Namespace) -> int:
    """``cljax bench``: the protocol's runs, then its leaderboard (printed)."""
    from cljax.bench import get_protocol, list_protocols, run_bench
    from cljax.experiment import StateSizeError

    if args.list:
        print(list_protocols())
        return 0
    if args.protocol is None:
        raise UsageError("bench: name a protocol (cljax bench --list names them)")
    try:
        protocol = get_protocol(args.protocol)
    except KeyError as e:
        raise UsageError(f"bench: {_message(e)}") from e
    overrides, deviations = _bench_overrides(args)
    progress_factory = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        def progress_factory(name, total):
            return tqdm(total=total, unit="step", desc=f"{name}-IL", leave=False, file=sys.stderr)

    workdir = args.workdir or f"runs/bench/{protocol.name}"
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        board = run_bench(protocol, workdir, methods=args.methods, seeds=args.seeds,
                          overrides=overrides, deviations=deviations, resume=args.resume,
                          run=not args.no_run, results_md=args.results_md,
                          progress_factory=progress_factory,
                          checkpoint_every=args.checkpoint_every, devices=args.devices,
                          merge_from=args.merge_from, seed_runs=args.seed_runs,
                          only_runs=None if args.runs is None else
                          [n.strip() for n in args.runs.split(",") if n.strip()])
    except KeyboardInterrupt:
        print(f"cljax: interrupted: the finished runs are in {workdir}; run the same command "
              "with --resume to continue (an unfinished run resumes from its checkpoints)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except _data_errors() + (StateSizeError,) as e:
        raise UsageError(_message(e)) from e
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"bench {protocol.name}: {_message(e)}") from e
    finally:
        signal.signal(signal.SIGTERM, previous)
    from cljax.bench import leaderboard_markdown

    print(leaderboard_markdown(board))
    print(f"wrote leaderboard.json, leaderboard.md, leaderboard.png in {workdir}")
    return 0


def _progress(args: argparse.Namespace) -> int:
    """``cljax progress``: where every run under the directories stands (printed)."""
    import json

    from cljax.progress import find_scenarios, format_progress, scenario_progress
    from cljax.workdir import to_strict_json

    reports = []
    for directory in args.directories:
        try:
            found = find_scenarios(directory)
        except FileNotFoundError as e:
            raise UsageError(f"progress: {e}") from e
        reports += [scenario_progress(scenario) for scenario in found]
    print(json.dumps(to_strict_json(reports), indent=1) if args.json
          else format_progress(reports))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``cljax`` command; returns the exit status (module docstring)."""
    args = build_parser().parse_args(argv)  # argparse's own errors exit 2 with the usage
    if args.command in ("configs", "methods"):
        print(list_configs() if args.command == "configs" else list_methods())
        return 0
    from cljax.workdir import WorkdirError

    commands = {"bench": _bench, "run": _run, "progress": _progress}
    try:
        return commands[args.command](args)
    except (UsageError, WorkdirError) as e:
        if getattr(args, "debug", False):
            traceback.print_exc()  # the whole chain: where the original error was raised
        else:
            print(f"cljax: error: {_message(e)}", file=sys.stderr)
        return EXIT_USAGE


__all__ = ["main", "build_parser", "resolve_config", "list_configs", "list_methods", "UsageError",
           "Override", "EXIT_USAGE", "EXIT_ALL_DIVERGED", "EXIT_INTERRUPTED"]


if __name__ == "__main__":
    sys.exit(main())
