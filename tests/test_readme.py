"""The README shows no code that the tests do not run: each ```python block
is a contiguous run of lines, at one indentation, of a file in examples/ or
tests/ (whose own tests run it)."""

import glob
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return [b.rstrip().splitlines() for b in re.findall(r"```python\n(.*?)```", text, re.S)]


def _sources():
    paths = glob.glob(os.path.join(ROOT, "examples", "*.py"))
    paths += glob.glob(os.path.join(ROOT, "tests", "*.py"))
    sources = {}
    for path in paths:
        with open(path) as f:
            sources[os.path.relpath(path, ROOT)] = f.read().splitlines()
    return sources


def _dedent(block):
    indent = min(len(line) - len(line.lstrip()) for line in block if line.strip())
    return [line[indent:] for line in block]


def _found_in(block, lines):
    block = _dedent(block)
    n = len(block)
    for start in range(len(lines) - n + 1):
        window = lines[start:start + n]
        if window[0].strip() != block[0].strip():
            continue
        if _dedent(window) == block:
            return True
    return False


def test_every_readme_code_block_comes_from_a_tested_file():
    blocks, sources = _blocks(), _sources()
    assert len(blocks) >= 10
    missing = [
        "\n".join(block) for block in blocks
        if block and not any(_found_in(block, lines) for lines in sources.values())
    ]
    assert not missing, "README blocks not found in examples/ or tests/:\n\n" + "\n\n".join(
        missing
    )
