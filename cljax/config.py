"""Experiment configs: load a config file, apply ``dotted.key=value`` overrides, parse sweeps.

Pure Python (it uses no JAX), shared by the CLI (``--set``, ``--sweep``) and the experiment
runner (regimes), so there is one override function.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Any


def load_config(path: str) -> dict:
    """Import a config file and call its ``get_config()``."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"cljax_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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

    Every parent must be a section (dict) of the config; a new top-level key is refused (a typo
    would otherwise be silently ignored); new keys inside a section are allowed (e.g. a model's
    optional argument).
    """
    *parents, leaf = key.strip().split(".")
    node = config
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise KeyError(f"{key}: {part!r} is not a section of the config")
        node = node[part]
    if leaf not in node and not parents:
        raise KeyError(f"{key}: the config has no key {leaf!r}; keys are {sorted(node)}")
    node[leaf] = value


def apply_assignment(config: dict, assignment: str) -> None:
    """Apply ``dotted.key=value`` (value parsed by :func:`parse_value`)."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value; got {assignment!r}")
    key, value = assignment.split("=", 1)
    apply_override(config, key, parse_value(value))


def parse_sweep(spec: str) -> tuple[str, list[float]]:
    """``"strength=1e2,1e3"`` → ``("strength", [100.0, 1000.0])``."""
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


__all__ = ["load_config", "parse_value", "apply_override", "apply_assignment", "parse_sweep"]
