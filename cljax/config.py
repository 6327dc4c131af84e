"""Experiment configs: the shipped ones by name, load a config file, apply ``dotted.key=value``
overrides, parse sweeps.

Pure Python (it uses no JAX), shared by the CLI (``--set``, ``--sweep``) and the experiment
runner (regimes), so there is one override function.
"""
from __future__ import annotations

import ast
import importlib.machinery
import pathlib
import types
from typing import Any

OPTIONAL_KEYS: dict[str, Any] = {
    "stream_options": {}, "hparams": {}, "method_options": {}, "sweep": {}, "seed": 0,
    "eval_chunk": 1000, "reset_optimizer": False, "data_dir": None, "epochs": None,
    "analysis": None, "analysis_options": {}, "regimes": {}, "features": None,
    "max_state_bytes": None, "data_placement": "auto", "device_memory_cap": None,
    "batch_devices": 1, "evaluate_on": "test", "validation_fraction": 0.1,
    "task_heads": "separate", "sampling": "iid", "regime": None, "metric_from_task": 0,
    "epochs_over": "largest_task", "augment": "none"}
"""The config's optional top-level keys with their defaults (``cljax.experiment`` documents
them); :func:`apply_override` may set one a config file leaves out."""

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
"""Where the configs shipped with cljax live (the package ``cljax.configs``, one per protocol)."""


def config_names() -> list[str]:
    """The names of the configs shipped with cljax (``cljax run NAME``), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def config_file(path_or_name: str) -> pathlib.Path:
    """The config file ``path_or_name`` names: an existing file as it is, else the shipped
    config of that name (``split_mnist``), so a name works from any directory. Raises
    ``FileNotFoundError`` naming the shipped configs when it is neither."""
    if not isinstance(path_or_name, str) or not path_or_name:
        raise TypeError(f"path_or_name must be a non-empty str; got {path_or_name!r}")
    p = pathlib.Path(path_or_name)
    if p.is_file():
        return p
    if path_or_name in config_names():
        return CONFIG_DIR / f"{path_or_name}.py"
    raise FileNotFoundError(f"config {path_or_name!r} is neither a file nor the name of a "
                            f"shipped config; names: {', '.join(config_names())}")


def config_summary(path_or_name: str) -> str:
    """The first paragraph of a config's module docstring on one line (its protocol), read
    without running the file."""
    source = config_file(path_or_name).read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    return " ".join(doc.split("\n\n")[0].split())


def load_config(path: str) -> dict:
    """Import a config file (or the shipped config of that name, :func:`config_file`) and
    call its ``get_config()``."""
    p = config_file(path)
    loader = importlib.machinery.SourceFileLoader(f"cljax_config_{p.stem}", str(p))
    module = types.ModuleType(loader.name)
    module.__file__ = str(p)
    loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} defines no get_config()")
    return module.get_config()


def parse_value(text: str) -> Any:
    """A Python literal (number, list, dict, bool, None, quoted string), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: dict, key: str, value: Any) -> None:
    """Set ``config[dotted.key] = value`` in place (the CLI's ``--set`` and the regimes).

    Every parent must be a section (dict) of the config; a new top-level key is refused unless
    it is one of :data:`OPTIONAL_KEYS` (a typo would otherwise be silently ignored); new keys
    inside a section are allowed (e.g. a model's optional argument).
    """
    *parents, leaf = key.strip().split(".")
    node = config
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise KeyError(f"{key}: {part!r} is not a section of the config")
        node = node[part]
    if leaf not in node and not parents and leaf not in OPTIONAL_KEYS:
        raise KeyError(f"{key}: the config has no key {leaf!r}; keys are {sorted(node)}, and "
                       f"the optional {sorted(set(OPTIONAL_KEYS) - set(node))}")
    node[leaf] = value


def apply_assignment(config: dict, assignment: str) -> None:
    """Apply ``dotted.key=value`` (value parsed by :func:`parse_value`)."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value; got {assignment!r}")
    key, value = assignment.split("=", 1)
    apply_override(config, key, parse_value(value))


def steps_win_over_epochs(config: dict) -> None:
    """An explicit step count wins over epochs: drop ``epochs`` (set None) and ``epochs_over``
    (which counts epochs) from ``config``, in place (``cljax run --steps``, ``cljax bench
    --steps``)."""
    config["epochs"] = None
    config.pop("epochs_over", None)


def parse_sweep(spec: str) -> tuple[str, list[float]]:
    """``"strength=1e2,1e3"`` → ``("strength", [100.0, 1000.0])``.

    Example:
        >>> parse_sweep("strength=1e2,1e3")
        ('strength', [100.0, 1000.0])
    """
    if "=" not in spec:
        raise ValueError(f"--sweep expects name=v1,v2,...; got {spec!r}")
    name, text = spec.split("=", 1)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"--sweep {name}: values must be numbers; got {text!r}") from e
    if not values:
        raise ValueError(f"--sweep {name}: no values given")
    return name.strip(), values


__all__ = ["OPTIONAL_KEYS", "CONFIG_DIR", "config_names", "config_file", "config_summary",
           "steps_win_over_epochs", "load_config",
           "parse_value", "apply_override", "apply_assignment", "parse_sweep"]
