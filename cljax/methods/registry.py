"""The registry of named methods: what ``--method NAME`` and ``cljax methods`` read.

``METHODS`` maps a name to a factory ``(**options) -> Method``; :func:`get_method` builds one,
:func:`describe_method` summarises one (its factory's docstring, options, hyperparameters and
scenarios) without running anything.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from cljax.methods.base import Method
from cljax.methods.baselines import joint_training, none, offline_joint_training
from cljax.methods.bir import bir
from cljax.methods.generative_replay import dgr, dgr_distill
from cljax.methods.hat import hat
from cljax.methods.mcsgd import mcsgd
from cljax.methods.natural import kfac_ewc, ncl, ncl_kfac
from cljax.methods.orthog import orthog
from cljax.methods.packnet import packnet
from cljax.methods.penalties import ewc, l2, mas, online_ewc, rwalk, si
from cljax.methods.pnn import pnn
from cljax.methods.projection import gpm, ogd, rgo, rgo2
from cljax.methods.rehearsal import agem, der, derpp, er, gem, icarl, lwf
from cljax.methods.remind import remind
from cljax.methods.rtf import rtf
from cljax.methods.sleep import src
from cljax.methods.vcl import vcl


def fine_tuning() -> Method:
    """Fine-tuning: each task trains on its own data only, the lower bound of every CL table."""
    return none


METHODS: Mapping[str, Callable[..., Method]] = {
    "none": fine_tuning, "joint": joint_training, "joint_offline": offline_joint_training,
    "ewc": ewc, "online_ewc": online_ewc, "si": si, "mas": mas, "l2": l2, "rwalk": rwalk,
    "kfac_ewc": kfac_ewc, "ncl": ncl, "ncl_kfac": ncl_kfac,
    "er": er, "agem": agem, "gem": gem, "lwf": lwf, "der": der, "derpp": derpp, "icarl": icarl,
    "remind": remind,   # rehearsal of product-quantised latent codes (a frozen lower network)
    "rgo": rgo, "rgo2": rgo2, "gpm": gpm, "ogd": ogd, "orthog": orthog,
    "mcsgd": mcsgd,   # geometry: mode connectivity (a rehearsal memory, used at task ends)
    "pnn": pnn, "hat": hat, "packnet": packnet,
    "vcl": vcl, "dgr": dgr, "dgr_distill": dgr_distill, "rtf": rtf, "bir": bir,
    "src": src,
}
"""Every named method, grouped by family: baselines, penalties, natural gradient, rehearsal,
gradient projection, geometry (mode connectivity), architecture, Bayesian, generative and sleep."""


def get_method(name: str, **options: Any) -> Method:
    """The method registered as ``name``, built with its static ``options``.

    Example:
        >>> from cljax.methods import get_method
        >>> method = get_method("ewc", fisher="empirical", num_examples=512)
        >>> method.name, dict(method.default_hparams)
        ('ewc', {'strength': 10000.0})
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    try:
        return METHODS[name](**options)
    except TypeError as e:
        raise TypeError(f"bad options {options} for method {name!r}: {e}") from e


class MethodDescription(NamedTuple):
    """What :func:`describe_method` returns."""

    name: str
    summary: str                              # the factory docstring's first sentence
    options: dict[str, Any]                   # static options and their defaults
    hparams: dict[str, tuple[float, str]]     # hyperparameter -> (default, domain)
    scenarios: tuple[str, ...]


def first_sentence(text: str) -> str:
    """The first sentence of ``text``'s first paragraph, on one line (a period ends a sentence
    when a capital, a quote or the end follows it, outside parentheses)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    depth = 0
    for i, ch in enumerate(paragraph):
        depth += (ch == "(") - (ch == ")")
        if ch == "." and depth == 0 and re.match(r"\.(\s+[A-Z`\"]|\s*$)", paragraph[i:]):
            return paragraph[:i + 1]
    return paragraph


def describe_method(name: str) -> MethodDescription:
    """The method ``name`` at its default options: its summary, options, hyperparameters (with
    their defaults and domains) and supported scenarios."""
    method = get_method(name)
    factory = METHODS[name]
    options = {p.name: p.default for p in inspect.signature(factory).parameters.values()
               if p.default is not inspect.Parameter.empty}
    names = list(method.default_hparams) + [h for h in method.hparam_domains
                                             if h not in method.default_hparams]
    hparams = {h: (method.default_hparams.get(h, float("nan")),
                   method.hparam_domains.get(h, "nonnegative")) for h in names}
    return MethodDescription(name, first_sentence(factory.__doc__ or name), options, hparams,
                             tuple(method.scenarios))


__all__ = ["METHODS", "get_method", "describe_method", "MethodDescription", "first_sentence",
           "fine_tuning", "joint_training"]
