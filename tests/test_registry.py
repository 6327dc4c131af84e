"""cljax.methods.registry: every method by name, and its description."""
import inspect

import pytest

from cljax.methods import METHODS, Method, describe_method, get_method
from cljax.methods.base import HPARAM_DOMAINS
from cljax.methods.registry import first_sentence


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_builds_and_describes_itself(name):
    method = get_method(name)
    assert isinstance(method, Method)
    d = describe_method(name)
    assert d.name == name and d.scenarios == tuple(method.scenarios)
    assert d.summary.endswith(".") and len(d.summary) > 20 and "\n" not in d.summary
    assert set(method.default_hparams) <= set(d.hparams)
    assert all(domain in HPARAM_DOMAINS for _, domain in d.hparams.values())
    signature = inspect.signature(METHODS[name]).parameters
    assert set(d.options) <= set(signature)


def test_description_reads_the_method():
    d = describe_method("online_ewc")
    assert d.hparams == {"strength": (1e4, "nonnegative"), "decay": (1.0, "unit_interval")}
    assert d.options["fisher"] == "exact" and d.summary.startswith("Online EWC")
    assert describe_method("icarl").scenarios == ("class",)
    assert get_method("dgr_distill").name == "dgr_distill"


def test_first_sentence():
    assert first_sentence("EWC (Kirkpatrick et al. 2017, eq. 3): a penalty. More.") == \
        "EWC (Kirkpatrick et al. 2017, eq. 3): a penalty."
    assert first_sentence("A (see e.g. B. Smith) thing.\n  Next one.") == \
        "A (see e.g. B. Smith) thing."
    assert first_sentence("no period\n\nsecond paragraph.") == "no period"
    with pytest.raises(TypeError, match="text must be a str"):
        first_sentence(None)


def test_unknown_method_and_bad_options():
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        get_method("magic")
    with pytest.raises(TypeError, match="bad options"):
        get_method("ewc", nonsense=1)
