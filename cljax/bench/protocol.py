"""A benchmark protocol as data: a shipped config, the methods a paper's table compares, and the
values the paper published for them.

A :class:`Protocol` is one table of one paper: the config that reproduces the paper's setting
(``cljax run <config>``), the scenarios it reports, how its metric is defined, and one
:class:`Entry` per row — the method, the hyperparameters it runs with (and how they were chosen),
and the paper's :class:`Published` value per scenario with its table. :func:`entry_runs` turns
an entry into the configs ``run_experiment`` runs: one per distinct set of hyperparameters, so a
method tuned per scenario (van de Ven & Tolias 2019 chose λ per scenario) runs its scenarios with
their own values.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from cljax.config import apply_override, config_names, load_config, steps_win_over_epochs
from cljax.data import SCENARIOS
from cljax.validation import check_choice

SPREADS = ("std", "sem", "ci95", "unstated")
"""What a published ± is: a standard deviation over the paper's runs, a standard error of the
mean, the half-width of a 95 % interval, or a ± the paper does not define."""

SELECTIONS = ("paper", "validation", "test_sweep", "default")
"""How an entry's hyperparameters were chosen: the paper's own values (its text or code), a
validation split carved from the training data, a sweep scored on the test set (what most
published grid searches did; recorded as such), or the method's defaults."""

TASK_DRAWS = ("fixed", "per_seed")
"""How a protocol draws its tasks over its seeds (:class:`Protocol`): the config's for every
seed, or each seed its own — a split stream's class order, a permuted stream's permutations."""

SEED_RUNS = ("together", "separate")
"""How an entry's seeds are laid out in runs (:func:`entry_runs`): one run of all of them,
vmapped, or one run per seed."""

PER_SEED_STREAM_OPTION = {"split": "class_order", "permuted": "seed"}
"""The ``stream_options`` key a per-seed task draw sets to the seed, per stream."""

_KEY = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Published:
    """One published value: ``value`` (percent, as printed), ``pm`` (the ± printed beside it,
    None if none), ``spread`` (what the ± is, :data:`SPREADS`), ``runs`` (the paper's number of
    runs, None if unstated) and ``source`` (where it is printed: "Table 2", "Fig. 3")."""

    value: float
    source: str
    pm: float | None = None
    spread: str = "unstated"
    runs: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.value, (int, float)) or isinstance(self.value, bool) \
                or not math.isfinite(self.value):
            raise ValueError(f"Published.value must be a finite number (percent); got "
                             f"{self.value!r}")
        if self.pm is not None and (not isinstance(self.pm, (int, float)) or self.pm < 0
                                    or not math.isfinite(self.pm)):
            raise ValueError(f"Published.pm must be None or a finite number >= 0; got "
                             f"{self.pm!r}")
        check_choice(self.spread, SPREADS, name="Published.spread")
        if self.runs is not None and (not isinstance(self.runs, int) or self.runs < 1):
            raise ValueError(f"Published.runs must be None or a positive int; got {self.runs!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("Published.source must name the table or figure the value is "
                             f"printed in; got {self.source!r}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of a protocol's table.

    ``key``: unique in the protocol (the run directory's name, ``--methods`` selects by it or
    by the method's name); ``method``: a name of :data:`cljax.methods.METHODS`; ``hparams``:
    the method's hyperparameters; ``scenario_hparams``: per scenario, values that replace
    ``hparams``' (a method tuned per scenario); ``overrides``: dotted config keys set for this
    entry (``{"optimizer.learning_rate": 0.03}``, ``{"method_options.per_class": 100}``);
    ``selection``: how the hyperparameters were chosen (:data:`SELECTIONS`); ``grid``: the
    values of each hyperparameter to choose among on the protocol's validation split
    (``selection="validation"``: one vmapped sweep, :func:`selection_run`, chooses per scenario
    and the runs use the choice); ``published``: the paper's value per scenario;
    ``scenarios``: the scenarios it runs (None: the protocol's); ``note``: what a reader must
    know about the row."""

    key: str
    method: str
    published: Mapping[str, Published] = dataclasses.field(default_factory=dict)
    hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    scenario_hparams: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    selection: str = "default"
    scenarios: tuple[str, ...] | None = None
    note: str = ""
    grid: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY.match(self.key):
            raise ValueError(f"Entry.key must be lower-case letters, digits and _; got "
                             f"{self.key!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"Entry {self.key!r}: selection must be one of {SELECTIONS}; got "
                             f"{self.selection!r}")
        for scenario in (*self.published, *self.scenario_hparams, *(self.scenarios or ())):
            if scenario not in SCENARIOS:
                raise ValueError(f"Entry {self.key!r}: unknown scenario {scenario!r}; "
                                 f"expected one of {SCENARIOS}")
        if (self.selection == "validation") != bool(self.grid):
            raise ValueError(f"Entry {self.key!r}: a grid goes with selection='validation' and "
                             f"back; got selection={self.selection!r}, grid={dict(self.grid)}")
        for name, values in self.grid.items():
            if not isinstance(values, (tuple, list)) or not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in values):
                raise ValueError(f"Entry {self.key!r}: grid[{name!r}] must be a non-empty "
                                 f"sequence of finite numbers; got {values!r}")
            if name in self.hparams or any(name in h for h in self.scenario_hparams.values()):
                raise ValueError(f"Entry {self.key!r}: {name!r} is both fixed and in the grid")
        from cljax.methods import METHODS

        if self.method not in METHODS:
            raise ValueError(f"Entry {self.key!r}: unknown method {self.method!r}; expected one "
                             f"of {', '.join(METHODS)}")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One table of one paper, runnable with ``cljax bench <name>``.

    ``config``: the shipped config (``cljax configs``) that is the paper's setting;
    ``overrides``: dotted keys applied to it for this protocol; ``scenarios``: those reported;
    ``metric``: the key of ``results.json``'s ``metrics`` compared (``"acc"``: average accuracy
    over the tasks after the last one); ``metric_definition``: the paper's definition in words
    (which tasks count, which split); ``citation``: the paper; ``seeds``: the default number of
    seeds; ``entries``: the rows; ``notes``: the protocol's deviations from the paper that are
    not yet knobs, each with its reason (printed with the leaderboard); ``device``: ``"cpu"``
    when the whole protocol fits this kind of machine in hours, ``"gpu"`` when it needs one;
    ``validation``: the config keys of the selection runs (default: evaluate on 10 % of every
    class carved from the training split, never reading the test split), with
    ``validation_note`` saying how the paper validated; ``selection_seeds``: seeds per grid
    point of a selection run; ``task_draw``: ``"fixed"`` (the config's tasks for every seed) or
    ``"per_seed"`` (seed s draws its own tasks: a split stream deals the classes into the tasks
    in the order of ``class_order=s``, :func:`cljax.data.split_tasks`, as van de Ven's code
    does; a permuted stream draws its permutations from ``seed=s``, as van de Ven's and
    A-GEM's code do; each seed is then a run of its own, and the leaderboard pools them;
    selection runs keep the config's tasks)."""

    name: str
    title: str
    config: str
    citation: str
    metric_definition: str
    entries: tuple[Entry, ...]
    scenarios: tuple[str, ...]
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "acc"
    seeds: int = 5
    notes: tuple[str, ...] = ()
    device: str = "cpu"
    validation: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(
        evaluate_on="validation", validation_fraction=0.1))
    validation_note: str = "10 % of every class of the training split, held out"
    selection_seeds: int = 3
    task_draw: str = "fixed"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _KEY.match(self.name):
            raise ValueError(f"Protocol.name must be lower-case letters, digits and _; got "
                             f"{self.name!r}")
        if self.config not in config_names():
            raise ValueError(f"protocol {self.name!r}: config {self.config!r} is not a shipped "
                             f"config ({', '.join(config_names())})")
        if not self.scenarios or any(s not in SCENARIOS for s in self.scenarios):
            raise ValueError(f"protocol {self.name!r}: scenarios must be a non-empty subset of "
                             f"{SCENARIOS}; got {self.scenarios!r}")
        keys = [e.key for e in self.entries]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"protocol {self.name!r}: entries must be non-empty with unique "
                             f"keys; got {keys}")
        for e in self.entries:
            extra = set(e.scenarios or ()) - set(self.scenarios)
            if extra:
                raise ValueError(f"protocol {self.name!r}, entry {e.key!r}: scenarios "
                                 f"{sorted(extra)} are not among the protocol's {self.scenarios}")
        for what in ("seeds", "selection_seeds"):
            value = getattr(self, what)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"protocol {self.name!r}: {what} must be a positive int; got "
                                 f"{value!r}")
        if self.task_draw not in TASK_DRAWS:
            raise ValueError(f"protocol {self.name!r}: task_draw must be one of "
                             f"{TASK_DRAWS}; got {self.task_draw!r}")
        stream = load_config(self.config).get("stream")
        if self.task_draw == "per_seed" and stream not in PER_SEED_STREAM_OPTION:
            raise ValueError(f"protocol {self.name!r}: task_draw='per_seed' needs a stream "
                             f"whose tasks a seed draws ({', '.join(PER_SEED_STREAM_OPTION)}); "
                             f"config {self.config!r} has {stream!r}")
        if self.validation.get("evaluate_on") != "validation":
            raise ValueError(f"protocol {self.name!r}: validation must set evaluate_on="
                             f"'validation' (selection never reads the test split); got "
                             f"{dict(self.validation)}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"protocol {self.name!r}: device must be 'cpu' or 'gpu'; got "
                             f"{self.device!r}")

    def entry(self, key: str) -> Entry:
        """The entry ``key``; KeyError naming the protocol's keys otherwise."""
        for e in self.entries:
            if e.key == key:
                return e
        raise KeyError(f"protocol {self.name!r} has no entry {key!r}; entries: "
                       f"{', '.join(e.key for e in self.entries)}")

    def entry_scenarios(self, entry: Entry) -> tuple[str, ...]:
        """The scenarios ``entry`` runs, in the protocol's order."""
        wanted = self.scenarios if entry.scenarios is None else entry.scenarios
        return tuple(s for s in self.scenarios if s in wanted)


@dataclasses.dataclass(frozen=True)
class EntryRun:
    """One ``run_experiment`` of an entry: the scenarios that share its hyperparameters, the
    run directory's name (relative to the benchmark's work directory) and the config (None: a
    run whose hyperparameters its selection run has not chosen yet, :func:`pending_run`)."""

    entry: str
    name: str
    scenarios: tuple[str, ...]
    config: dict | None
    group: str = ""

    @property
    def pooled(self) -> str:
        """The name of the runs pooled into one leaderboard row with this one: ``group`` (a
        per-seed class order splits an entry's seeds into runs of one seed), else ``name``."""
        return self.group or self.name


def is_complete(run: EntryRun, results: Mapping[str, Any] | None) -> bool:
    """Whether ``results`` (a ``results.json``, or None) holds every scenario of ``run``."""
    return results is not None and set(run.scenarios) <= set(results.get("scenarios", {}))


def pending_run(protocol: Protocol, entry: Entry) -> EntryRun:
    """The placeholder of an entry's runs before its selection run has chosen their
    hyperparameters (listed as to do, never run)."""
    return EntryRun(entry.key, entry.key, protocol.entry_scenarios(entry), None)


def _config(protocol: Protocol, entry: Entry, layers: tuple[Mapping[str, Any], ...]) -> dict:
    """The protocol's config with ``layers`` of dotted overrides applied in order (the config's
    ``method_options`` kept only when its method is the entry's)."""
    cfg = copy.deepcopy(load_config(protocol.config))
    if cfg.get("method") != entry.method:   # the config's options are its method's
        cfg["method_options"] = {}
    for layer in layers:
        for dotted, value in layer.items():
            apply_override(cfg, dotted, copy.deepcopy(value))
    return cfg


def selection_run(protocol: Protocol, entry: Entry, *,
                  overrides: Mapping[str, Any] | None = None) -> EntryRun:
    """The run that chooses ``entry``'s hyperparameters (``entry.grid``) on the protocol's
    validation split (``protocol.validation``): every grid point × ``protocol.selection_seeds``
    seeds as one vmapped sweep over the entry's scenarios, named ``<key>_select``; each
    scenario's ``best_hparams`` in its results is the choice (:func:`chosen_hparams`)."""
    if not entry.grid:
        raise ValueError(f"entry {entry.key!r} has no grid to select on")
    user = dict(overrides or {})
    cfg = _config(protocol, entry, (protocol.overrides, entry.overrides, user,
                                    protocol.validation))
    if "steps" in user:
        steps_win_over_epochs(cfg)
    cfg.update(method=entry.method, hparams=dict(entry.hparams),
               sweep={k: list(v) for k, v in entry.grid.items()},
               seeds=protocol.selection_seeds, scenarios=list(protocol.entry_scenarios(entry)))
    return EntryRun(entry.key, f"{entry.key}_select", protocol.entry_scenarios(entry), cfg)


def chosen_hparams(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per scenario, the grid point a finished :func:`selection_run` chose (the best validation
    ACC among the points with the fewest diverged runs)."""
    return {name: dict(sc["best_hparams"] if "best_hparams" in sc else sc["hparams"])
            for name, sc in results["scenarios"].items()}


def default_seed_runs(protocol: Protocol) -> str:
    """How :func:`entry_runs` lays out a protocol's seeds unless told: ``"separate"`` (one run
    per seed) when each seed draws its own tasks, else ``"together"`` (one run, the seeds
    vmapped)."""
    return "separate" if protocol.task_draw == "per_seed" else "together"


def check_seed_runs(protocol: Protocol, seed_runs: str | None) -> str:
    """``seed_runs`` (None: :func:`default_seed_runs`) checked against ``protocol``: one of
    :data:`SEED_RUNS`, and ``"separate"`` when each seed draws its own tasks."""
    if seed_runs is None:
        return default_seed_runs(protocol)
    check_choice(seed_runs, SEED_RUNS, name="seed_runs")
    if seed_runs == "together" and protocol.task_draw == "per_seed":
        raise ValueError(f"seed_runs='together': protocol {protocol.name!r} draws each seed's "
                         "tasks (task_draw='per_seed'), so each seed is a run of its own")
    return seed_runs


def entry_runs(protocol: Protocol, entry: Entry, *, seeds: int,
               overrides: Mapping[str, Any] | None = None,
               chosen: Mapping[str, Mapping[str, float]] | None = None,
               seed_runs: str | None = None) -> list[EntryRun]:
    """The runs of ``entry``: the protocol's config with the protocol's overrides, then the
    entry's, then ``overrides`` (the user's, e.g. fewer steps: a ``steps`` there drops the
    config's ``epochs``), with the entry's method, its hyperparameters and ``seeds`` (the
    config's ``method_options`` are kept only when its method is the entry's); one run per
    distinct set of per-scenario hyperparameters (named ``key`` when there is one,
    ``key_<scenarios>`` when there are several). An entry with a grid needs ``chosen``: per
    scenario, the hyperparameters its selection run chose (:func:`chosen_hparams`).
    ``seed_runs``: ``"together"`` (one run of ``seeds`` seeds, vmapped) or ``"separate"`` (one
    run of one seed per seed, named ``<name>_seed<s>`` and pooled into one row: runs that can
    go to different processes, machines or sittings; a per-seed task draw needs it); None: the
    protocol's :func:`default_seed_runs`."""
    seed_runs = check_seed_runs(protocol, seed_runs)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds must be a positive int; got {seeds!r}")
    if entry.grid and chosen is None:
        raise ValueError(f"entry {entry.key!r} chooses {sorted(entry.grid)} on validation "
                         "data: pass chosen= (its selection run's choice)")
    groups: list[tuple[dict, list[str]]] = []
    for scenario in protocol.entry_scenarios(entry):
        hp = {**entry.hparams, **entry.scenario_hparams.get(scenario, {}),
              **((chosen or {}).get(scenario, {}))}
        for known, names in groups:
            if known == hp:
                names.append(scenario)
                break
        else:
            groups.append((hp, [scenario]))
    runs = []
    for hp, names in groups:
        cfg = _config(protocol, entry, (protocol.overrides, entry.overrides, overrides or {}))
        if "steps" in (overrides or {}):
            steps_win_over_epochs(cfg)     # as cljax run
        cfg.update(method=entry.method, hparams=dict(hp), sweep={}, seeds=seeds,
                   scenarios=list(names))
        name = entry.key if len(groups) == 1 else f"{entry.key}_{'_'.join(names)}"
        if seed_runs == "together":
            runs.append(EntryRun(entry.key, name, tuple(names), cfg))
            continue
        for s in range(seeds):      # one run per seed (with its own tasks when drawn per seed)
            one = copy.deepcopy(cfg)
            one.update(seeds=1, seed=cfg.get("seed", 0) + s)
            if protocol.task_draw == "per_seed":
                option = PER_SEED_STREAM_OPTION[one["stream"]]
                one["stream_options"] = {**one.get("stream_options", {}), option: one["seed"]}
            runs.append(EntryRun(entry.key, f"{name}_seed{one['seed']}", tuple(names), one,
                                 group=name))
    return runs


__all__ = ["SPREADS", "SELECTIONS", "TASK_DRAWS", "SEED_RUNS", "default_seed_runs",
           "check_seed_runs", "PER_SEED_STREAM_OPTION", "Published", "Entry",
           "Protocol", "EntryRun", "entry_runs", "selection_run", "chosen_hparams", "pending_run",
           "is_complete"]
