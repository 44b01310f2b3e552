"""Every Python block of the README runs as pasted and prints what the prose
around it states.

Each block is a whole program. A block whose first line is
``# continues the block above`` runs after the one before it (and that
one's own predecessors), as the README tells a reader to do; every other
block runs on its own. Each program runs in a fresh Python process, in a
scratch directory, so nothing from the test session (x64, imports, the
working directory) leaks into it. What a block prints is checked against
the figures the prose states (``EXPECTED``), so a block that runs but no
longer reaches its figure fails here.

The scripts in ``examples/`` are README blocks with a docstring on top;
``test_each_example_is_a_readme_block`` keeps them identical, so running
the blocks runs the examples.

The programs take 10 to 40 s each (most of it importing and compiling);
they run side by side, started in the background when this module is
collected (``conftest.py``), so they overlap the rest of the suite.
"""

import ast
import glob
import os
import re

import pytest
from helpers import readme_program_output, readme_programs, start_readme_programs

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _number(text):
    return float(text.rstrip("%"))


# One entry per figure the README states about a block's output: a pattern
# for the printed line, and the check of its figures. The bounds leave room
# for another CPU's round-off, not for a different result.
EXPECTED = {
    # Raw JAX: "loss 1e-27 after 4 steps" (float64).
    r"^loss (\S+) after (\d+) steps$":
        lambda m: _number(m[1]) < 1e-20 and int(m[2]) <= 6,
    # Flax on digits, classification defaults: "test accuracy 96.7%".
    r"^test accuracy (\S+)%$": lambda m: _number(m[1]) >= 95.0,
    # Flax CNN with BatchNorm and dropout: "batch norm and dropout: test
    # accuracy 97.6%" (seeds 0-4 of the benchmark: 93.6-97.3%).
    r"^batch norm and dropout: test accuracy (\S+)%$": lambda m: _number(m[1]) >= 93.0,
    # Equinox PINN: "max |u - sin(πx)| = 9e-11 after 300 steps".
    r"^max \|u - sin\(πx\)\| = (\S+) after (\d+) steps$":
        lambda m: _number(m[1]) < 1e-7 and int(m[2]) == 300,
    # inject_hyperparams: the λ set between two steps is the one used.
    r"^λ of the second step: (\S+)$": lambda m: _number(m[1]) == 0.5,
    # Line search: "loss 2e-01 -> 4e-06 in 20 steps".
    r"^line search: loss (\S+) -> (\S+) in 20 steps$":
        lambda m: _number(m[2]) < 1e-2 * _number(m[1]),
    # Checkpoints, both ways: "resumed bit for bit: True".
    r"^numpy: resumed bit for bit: (\w+)$": lambda m: m[1] == "True",
    r"^orbax: resumed bit for bit: (\w+)$": lambda m: m[1] == "True",
    # Poisson 2-D: "relative L2 error 1e-08 after 150 steps".
    r"^relative L2 error (\S+) after (\d+) steps$":
        lambda m: _number(m[1]) < 2e-6 and int(m[2]) == 150,
    # The same in an optax loop, with LowestLoss: "optax loop: relative L2
    # error 9e-09 at the lowest loss, 9e-09 at the last iterate".
    r"^optax loop: relative L2 error (\S+) at the lowest loss, (\S+) at the last iterate$":
        lambda m: _number(m[1]) < 2e-6 and _number(m[2]) > 0,
    # Sharding: "4 devices: relative difference 2e-13".
    r"^(\d+) devices: relative difference (\S+)$":
        lambda m: int(m[1]) == 4 and _number(m[2]) < 1e-10,
}


def test_readme_blocks_are_whole_programs():
    programs = readme_programs()
    assert len(programs) >= 8
    for line, source in programs:
        ast.parse(source, filename=f"README.md block at line {line}")
        assert "import " in source, f"README block at line {line} imports nothing"


@pytest.fixture(scope="module")
def outputs():
    """{README line of the block: stdout} once every program has finished."""
    results = {}
    for line, process in start_readme_programs().items():
        returncode, out, err = readme_program_output(process, timeout=900)
        assert returncode == 0, f"README block at line {line} failed as pasted:\n{err[-4000:]}"
        results[line] = out
    return results


def test_every_readme_block_runs_and_prints_what_the_prose_states(outputs):
    matched = {pattern: [] for pattern in EXPECTED}
    for line, out in outputs.items():
        lines = out.splitlines()
        hits = [(p, m) for text in lines for p in EXPECTED if (m := re.match(p, text))]
        assert hits, f"README block at line {line} printed no stated figure: {out!r}"
        for pattern, match in hits:
            matched[pattern].append(line)
            assert EXPECTED[pattern](match), (
                f"README block at line {line} printed {match[0]!r}, "
                "not what the README states"
            )
    unmatched = [p for p, lines in matched.items() if len(lines) != 1]
    assert not unmatched, f"figures printed by no block, or by several: {unmatched}"


def test_each_example_is_a_readme_block():
    """examples/NAME.py is a module docstring and then a README block, as is,
    and the README names the file next to that block."""
    sources = [source.strip() for _, source in readme_programs()]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    paths = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))
    assert paths
    for path in paths:
        with open(path) as f:
            text = f.read()
        docstring = ast.get_docstring(ast.parse(text))
        assert docstring, f"{path} has no docstring"
        body = text[text.index('"""', 3) + 3:].strip()
        assert body in sources, f"{os.path.basename(path)} is not a README block as is"
        assert f"examples/{os.path.basename(path)}" in readme
