"""The docstring examples of cljax, run as doctests (every public module's)."""
import doctest
import importlib

import pytest
from helpers import public_module_names

MODULES = public_module_names()
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
# the core functions whose examples must exist (a doctest deleted by mistake fails here)
REQUIRED = {"cljax.importance.fisher.exact_fisher_diagonal",
            "cljax.transforms.penalty.quadratic_penalty",
            "cljax.curvature.lanczos.top_eigenvalues", "cljax.metrics.all_metrics",
            "cljax.methods.registry.get_method", "cljax.config.parse_sweep"}


def _tests(name):
    return [t for t in doctest.DocTestFinder().find(importlib.import_module(name)) if t.examples]


def test_the_core_functions_have_examples():
    found = {t.name for name in MODULES for t in _tests(name)}
    assert REQUIRED <= found, sorted(REQUIRED - found)


@pytest.mark.parametrize("name", [n for n in MODULES if _tests(n)])
def test_examples_run(name):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in _tests(name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result}"
