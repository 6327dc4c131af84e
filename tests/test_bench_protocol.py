"""cljax.bench.protocol and cljax.bench.registry: protocols as data, their runs' configs."""
import math

import jax.numpy as jnp
import pytest

from cljax.bench import (
    PROTOCOLS,
    Entry,
    Protocol,
    Published,
    chosen_hparams,
    entry_runs,
    get_protocol,
    list_protocols,
    select_entries,
    selection_run,
)
from cljax.experiment import validate_config


def _protocol(**kw):
    entries = kw.pop("entries", (
        Entry("none", "none", {"task": Published(90.0, "Table 1")}),
        Entry("ewc", "ewc", {"task": Published(98.0, "Table 1", pm=0.2, spread="sem", runs=3)},
              hparams={"strength": 10.0}, scenario_hparams={"domain": {"strength": 1e3}},
              selection="paper"),
        Entry("ewc_big", "ewc", hparams={"strength": 1e4}, scenarios=("class",))))
    return Protocol(**{"name": "toy", "title": "Toy", "config": "split_mnist",
                       "citation": "nobody", "metric_definition": "ACC",
                       "scenarios": ("task", "domain", "class"), "entries": entries, **kw})


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_registered_run_is_a_valid_config(name):
    protocol = get_protocol(name)
    covered = set()
    for entry in protocol.entries:
        if entry.grid:
            sel = selection_run(protocol, entry)
            assert validate_config(sel.config)["evaluate_on"] == "validation"
            covered |= set(sel.scenarios)
            continue
        for run in entry_runs(protocol, entry, seeds=2):
            valid = validate_config(run.config)
            per_seed = protocol.task_draw == "per_seed"
            assert valid["method"] == entry.method and valid["seeds"] == (1 if per_seed else 2)
            assert tuple(valid["scenarios"]) == run.scenarios
            covered |= set(run.scenarios)
        for scenario, published in entry.published.items():
            assert scenario in protocol.entry_scenarios(entry)
            assert published.source.strip() and math.isfinite(published.value)
    assert covered == set(protocol.scenarios)


def test_runs_group_the_scenarios_that_share_hyperparameters():
    p = _protocol()
    runs = entry_runs(p, p.entry("ewc"), seeds=3)
    assert [(r.name, r.scenarios, r.config["hparams"]) for r in runs] == [
        ("ewc_task_class", ("task", "class"), {"strength": 10.0}),
        ("ewc_domain", ("domain",), {"strength": 1e3})]
    (one,) = entry_runs(p, p.entry("none"), seeds=1)
    assert one.name == "none" and one.scenarios == ("task", "domain", "class")
    (big,) = entry_runs(p, p.entry("ewc_big"), seeds=1)
    assert big.scenarios == ("class",) and big.name == "ewc_big"


def test_overrides_apply_in_order_and_steps_drop_epochs():
    p = _protocol(overrides={"optimizer.learning_rate": 0.5, "batch_size": 7},
                  entries=(Entry("ewc", "ewc", overrides={"optimizer.learning_rate": 0.25,
                                                           "epochs": 2}),))
    (run,) = entry_runs(p, p.entry("ewc"), seeds=1)
    assert run.config["optimizer"]["learning_rate"] == 0.25 and run.config["batch_size"] == 7
    assert run.config["epochs"] == 2
    (run,) = entry_runs(p, p.entry("ewc"), seeds=1, overrides={"steps": 3})
    assert run.config["steps"] == 3 and run.config["epochs"] is None
    with pytest.raises(KeyError, match="no key 'stepz'"):
        entry_runs(p, p.entry("ewc"), seeds=1, overrides={"stepz": 3})
    with pytest.raises(ValueError, match="seeds must be a positive int"):
        entry_runs(p, p.entry("ewc"), seeds=0)


def test_a_grid_entry_runs_a_validation_sweep_then_the_chosen_points():
    p = _protocol(entries=(Entry("si", "si", hparams={"xi": 0.1}, selection="validation",
                                 grid={"strength": (1.0, 10.0)}),))
    entry = p.entry("si")
    sel = selection_run(p, entry, overrides={"steps": 7})
    assert sel.name == "si_select" and sel.scenarios == ("task", "domain", "class")
    cfg = sel.config
    assert cfg["evaluate_on"] == "validation" and cfg["validation_fraction"] == 0.1
    assert cfg["sweep"] == {"strength": [1.0, 10.0]} and cfg["hparams"] == {"xi": 0.1}
    assert cfg["seeds"] == p.selection_seeds and cfg["steps"] == 7
    validate_config(cfg)
    with pytest.raises(ValueError, match="pass chosen="):
        entry_runs(p, entry, seeds=2)
    results = {"scenarios": {"task": {"hparams": {"strength": 10.0, "xi": 0.1},
                                      "best_hparams": {"strength": 10.0, "xi": 0.1}},
                             "domain": {"best_hparams": {"strength": 1.0, "xi": 0.1}},
                             "class": {"best_hparams": {"strength": 10.0, "xi": 0.1}}}}
    chosen = chosen_hparams(results)
    runs = entry_runs(p, entry, seeds=2, chosen=chosen)
    assert [(r.name, r.scenarios, r.config["hparams"]) for r in runs] == [
        ("si_task_class", ("task", "class"), {"xi": 0.1, "strength": 10.0}),
        ("si_domain", ("domain",), {"xi": 0.1, "strength": 1.0})]
    assert all("evaluate_on" not in r.config for r in runs)     # the test split, by default
    with pytest.raises(ValueError, match="has no grid"):
        selection_run(p, Entry("none", "none"))


def test_a_per_seed_task_draw_gives_each_seed_a_run_of_its_own():
    p = _protocol(task_draw="per_seed", entries=(Entry("none", "none"),))
    runs = entry_runs(p, p.entry("none"), seeds=3)
    assert [(r.name, r.pooled, r.config["seeds"], r.config["seed"],
             r.config["stream_options"]["class_order"]) for r in runs] == [
        ("none_seed0", "none", 1, 0, 0), ("none_seed1", "none", 1, 1, 1),
        ("none_seed2", "none", 1, 2, 2)]
    for r in runs:
        validate_config(r.config)
    (fixed,) = entry_runs(_protocol(entries=(Entry("none", "none"),)), p.entry("none"),
                          seeds=3)
    assert fixed.pooled == fixed.name == "none" and fixed.config["seeds"] == 3
    # a permuted stream: each seed draws its own permutations (stream_options.seed)
    permuted = _protocol(config="permuted_mnist", task_draw="per_seed",
                         scenarios=("task", "domain"), entries=(Entry("none", "none"),))
    runs = entry_runs(permuted, permuted.entry("none"), seeds=2)
    assert [(r.name, r.config["seed"], r.config["stream_options"]["seed"],
             "class_order" in r.config["stream_options"]) for r in runs] == [
        ("none_seed0", 0, 0, False), ("none_seed1", 1, 1, False)]
    for r in runs:
        validate_config(r.config)
    with pytest.raises(ValueError, match="task_draw='per_seed' needs a stream"):
        _protocol(config="rotated_mnist_rgo", task_draw="per_seed")
    with pytest.raises(ValueError, match="task_draw must be one of"):
        _protocol(task_draw="shuffled")


def test_separate_seed_runs_split_a_fixed_draw_into_runs_of_one_seed():
    p = _protocol(entries=(Entry("none", "none"),), overrides={"seed": 5})
    (together,) = entry_runs(p, p.entry("none"), seeds=3)
    runs = entry_runs(p, p.entry("none"), seeds=3, seed_runs="separate")
    assert [(r.name, r.pooled, r.config["seeds"], r.config["seed"]) for r in runs] == [
        ("none_seed5", "none", 1, 5), ("none_seed6", "none", 1, 6), ("none_seed7", "none", 1, 7)]
    for r in runs:      # the fixed tasks: every seed's stream options are the config's
        assert r.config["stream_options"] == together.config["stream_options"]
        validate_config(r.config)
    # the first seed's run is the together run with one seed: the same program
    (alone,) = entry_runs(p, p.entry("none"), seeds=1)
    assert runs[0].config == alone.config
    per_seed = _protocol(task_draw="per_seed", entries=(Entry("none", "none"),))
    assert ([r.name for r in entry_runs(per_seed, per_seed.entry("none"), seeds=2,
                                         seed_runs="separate")]
            == [r.name for r in entry_runs(per_seed, per_seed.entry("none"), seeds=2)])
    with pytest.raises(ValueError, match="draws each seed's tasks"):
        entry_runs(per_seed, per_seed.entry("none"), seeds=2, seed_runs="together")
    with pytest.raises(ValueError, match="seed_runs must be one of"):
        entry_runs(p, p.entry("none"), seeds=2, seed_runs="apart")


def test_select_entries_by_key_or_method():
    p = _protocol()
    assert select_entries(p, None) == ["none", "ewc", "ewc_big"] == select_entries(p, "all")
    assert select_entries(p, "ewc") == ["ewc", "ewc_big"]
    assert select_entries(p, "ewc_big, none") == ["ewc_big", "none"]
    with pytest.raises(ValueError, match="no entry or method 'si'; entries: none, ewc, ewc_big"):
        select_entries(p, "none,si")
    with pytest.raises(ValueError, match="at least one"):
        select_entries(p, " , ")


@pytest.mark.parametrize("make, message", [
    (lambda: Published(float("nan"), "Table 1"), "value must be a finite number"),
    (lambda: Published(90.0, " "), "source must name the table"),
    (lambda: Published(90.0, "Table 1", pm=-1.0), "pm must be None or a finite number >= 0"),
    (lambda: Published(90.0, "Table 1", spread="var"), "spread must be one of"),
    (lambda: Entry("Bad Key", "ewc"), "key must be lower-case"),
    (lambda: Entry("x", "ewcc"), "unknown method 'ewcc'"),
    (lambda: Entry("x", "ewc", {"tasks": Published(1.0, "T")}), "unknown scenario 'tasks'"),
    (lambda: Entry("x", "ewc", selection="luck"), "selection must be one of"),
    (lambda: _protocol(config="no_such_config"), "not a shipped config"),
    (lambda: _protocol(entries=(Entry("a", "none"), Entry("a", "ewc"))), "unique keys"),
    (lambda: _protocol(scenarios=("task",)), r"scenarios \['class'\] are not among"),
    (lambda: _protocol(seeds=0), "seeds must be a positive int"),
    (lambda: _protocol(selection_seeds=0), "selection_seeds must be a positive int"),
    (lambda: _protocol(validation={"evaluate_on": "test"}), "never reads the test split"),
    (lambda: Entry("x", "ewc", grid={"strength": (1.0,)}), "a grid goes with selection"),
    (lambda: Entry("x", "ewc", selection="validation"), "a grid goes with selection"),
    (lambda: Entry("x", "ewc", selection="validation", grid={"strength": ()}),
     "non-empty sequence of finite numbers"),
    (lambda: Entry("x", "ewc", selection="validation", hparams={"strength": 1.0},
                   grid={"strength": (1.0,)}), "both fixed and in the grid"),
])
def test_invalid_definitions_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_registry_lookup_and_listing():
    with pytest.raises(KeyError, match="unknown protocol 'nope'; registered: "):
        get_protocol("nope")
    with pytest.raises(TypeError, match="name must be a str"):
        get_protocol(3)
    listing = list_protocols().splitlines()
    assert len(listing) == len(PROTOCOLS)
    assert all(line.split()[0] in PROTOCOLS for line in listing)
    with pytest.raises(KeyError, match="has no entry 'x'"):
        _protocol().entry("x")


def test_agem_split_cifar_trains_the_17_reported_tasks_dealt_per_seed():
    """A-GEM's protocol: classes 0–14 kept for cross-validation (not trained), 15–99 dealt
    into 17 tasks of 5 by each seed; every run a shuffled single pass at batch 10."""
    protocol = get_protocol("agem2019_split_cifar100")
    runs = entry_runs(protocol, protocol.entry("agem"), seeds=3)
    assert [r.config["stream_options"]["class_order"] for r in runs] == [0, 1, 2]
    for run in runs:
        cfg = validate_config(run.config)
        tasks = cfg["stream_options"]["tasks"]
        assert len(tasks) == 17 and all(len(t) == 5 for t in tasks)
        assert sorted(c for t in tasks for c in t) == list(range(15, 100))
        assert (cfg["steps"], cfg["batch_size"], cfg["sampling"]) == (250, 10, "shuffled")
        assert cfg["method_options"] == {"per_class": 13, "memory_batch_size": 256,
                                         "memory_replace": False}
    none = entry_runs(protocol, protocol.entry("none"), seeds=1)[0].config
    assert none["optimizer"]["learning_rate"] == 0.01 and none["method_options"] == {}


@pytest.mark.parametrize("name", ["agem2019_permuted_mnist", "agem2019_split_cifar100"])
def test_agem_code_rows_take_their_estimator_and_twice_their_lambda(name):
    """A-GEM's model.py penalises λ Σ Ω Δθ² (ours: (λ/2) Σ Ω Δθ²): its rows "as their code"
    run strength 2λ, EWC on the running, min–max rescaled Fisher of the last task only."""
    from cljax.methods import get_method
    from cljax.methods.penalties import RunningFisherEWCState

    protocol = get_protocol(name)
    run = entry_runs(protocol, protocol.entry("ewc_agem_code"), seeds=1)[0]
    cfg = validate_config(run.config)
    assert cfg["method"] == "ewc" and cfg["hparams"] == {"strength": 20.0}
    window = {"agem2019_permuted_mnist": 10, "agem2019_split_cifar100": 50}[name]
    assert {"fisher_window": 50, **cfg["method_options"]} == {
        "fisher": "running", "accumulate": "latest", "normalize": "minmax",
        "fisher_window": window}     # their FISHER_UPDATE_AFTER per script; 50 the default
    method = get_method("ewc", **cfg["method_options"])
    assert isinstance(method.init({"w": jnp.zeros(2)}, None, {}, None), RunningFisherEWCState)
    if name == "agem2019_split_cifar100":
        si = validate_config(entry_runs(protocol, protocol.entry("si_agem_code"),
                                        seeds=1)[0].config)
        assert si["hparams"] == {"strength": 0.2, "xi": 1e-3}
