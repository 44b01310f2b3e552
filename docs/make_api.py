"""Writes docs/API.md, the API reference, from the docstrings.

    python docs/make_api.py

The public names are those in ``ggn_jax.__all__``, ``ggn_jax.paper.__all__``
and in the adapters and pde modules; constants, which cannot carry a docstring, are listed with their
values and a line each from ``CONSTANTS`` below. tests/test_docs.py checks
that docs/API.md is what this script writes.
"""

from __future__ import annotations

import inspect
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ggn_jax  # noqa: E402
import ggn_jax.adapters  # noqa: E402
import ggn_jax.pde  # noqa: E402

CONSTANTS = {
    "ACTIVATIONS": "the built-in activations of `mlp`, by name",
    "DAMPING_RULES": "the values of the `damping_rule` option",
    "NAMED_LOSSES": "the loss names `ggn` and `fit` accept",
    "SOLVERS": "the values of the `solver` option",
    "SOLVER_NAMES": "the solver codes of `GGNState.solver` and `StepLog.solver`, by code",
}
MODULES = {"ggn_jax": [n for n in ggn_jax.__all__ if n != "paper"],
           "ggn_jax.paper": list(ggn_jax.paper.__all__),
           "ggn_jax.adapters": ["from_nnx", "from_equinox",
                                                                  "Adapted"],
           "ggn_jax.pde": ["laplacian", "second_derivative", "folx_available"]}


def public_objects() -> list[tuple[str, object]]:
    """(qualified name, object) of every documented public name."""
    objects = []
    for module_name, names in MODULES.items():
        module = sys.modules[module_name]
        objects += [(f"{module_name}.{name}", getattr(module, name)) for name in names]
    return objects


def _signature(name: str, obj: object) -> str:
    """The call signature, annotations shown as written (NamedTuples under
    ``from __future__ import annotations`` hold them as ForwardRefs)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    plain = lambda a: a.__forward_arg__ if hasattr(a, "__forward_arg__") else a
    signature = signature.replace(
        parameters=[p.replace(annotation=plain(p.annotation))
                    for p in signature.parameters.values()],
        return_annotation=plain(signature.return_annotation),
    )
    return f"{name}{signature}".replace("'", "")


def _methods(cls: type) -> list[tuple[str, object]]:
    """A class's own public methods that carry a docstring of their own."""
    return [(n, m) for n, m in vars(cls).items()
            if not n.startswith("_") and inspect.isfunction(m) and m.__doc__]


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/make_api.py`; do not edit by hand.",
        "Every example below runs as a doctest in the test suite.",
        "",
        "## Constants",
        "",
    ]
    for name, what in CONSTANTS.items():
        module = "ggn_jax.paper" if name in ggn_jax.paper.__all__ else "ggn_jax"
        value = getattr(sys.modules[module], name)
        shown = list(value) if isinstance(value, dict) and name == "ACTIVATIONS" else value
        lines.append(f"- `{module}.{name}`: {what}: `{shown!r}`")
    lines.append("")
    for qualified, obj in public_objects():
        if qualified.split(".")[-1] in CONSTANTS:
            continue
        kind = "class" if inspect.isclass(obj) else "function"
        lines += [f"## `{qualified}` ({kind})", "", "```text",
                  _signature(qualified, obj), "", inspect.getdoc(obj), "```", ""]
        if inspect.isclass(obj):
            for method_name, method in _methods(obj):
                lines += [f"### `{qualified}.{method_name}` (method)", "", "```text",
                          _signature(f"{qualified}.{method_name}", method), "",
                          inspect.getdoc(method), "```", ""]
    return "\n".join(lines)


def main() -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "API.md")
    with open(path, "w") as f:
        f.write(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
