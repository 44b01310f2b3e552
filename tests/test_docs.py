"""Documentation: every public name has a docstring with its arguments, what it
returns and a runnable example (the examples run as doctests through
pytest's --doctest-modules), and docs/API.md is generated from them."""

import importlib.util
import inspect
import os

import pytest

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")


def _make_api():
    spec = importlib.util.spec_from_file_location("make_api", os.path.join(DOCS, "make_api.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_api = _make_api()
NAMES = [(name, obj) for name, obj in make_api.public_objects()
         if name.split(".")[-1] not in make_api.CONSTANTS]


@pytest.mark.parametrize("name,obj", NAMES, ids=[name for name, _ in NAMES])
def test_every_public_name_has_args_returns_and_an_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Example:" in doc and ">>>" in doc, f"{name} has no runnable example"
    if inspect.isclass(obj):
        assert "Attributes:" in doc or "Args:" in doc, f"{name} does not list its fields"
    else:
        assert "Args:" in doc and "Returns:" in doc, f"{name} lacks Args or Returns"


def test_every_constant_is_described():
    import ggn_jax

    constants = [n for module in (ggn_jax, ggn_jax.paper) for n in module.__all__
                 if not (callable(getattr(module, n)) or inspect.ismodule(getattr(module, n)))
                 or isinstance(getattr(module, n), dict)]
    assert sorted(constants) == sorted(make_api.CONSTANTS)


def test_api_md_is_generated_from_the_current_docstrings():
    with open(os.path.join(DOCS, "API.md")) as f:
        assert f.read() == make_api.render(), "run: python docs/make_api.py"
