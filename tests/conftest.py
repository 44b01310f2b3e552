"""Test configuration: float64 on, as the reference comparisons need it.

Tests of float32 behaviour create float32 arrays explicitly.

The 4-device sharding comparison (test_sharding.py) runs in a process of its
own; when its tests are collected, that process starts at once, so that it
overlaps the rest of the suite instead of adding to it. So do the README's
code blocks (test_readme.py), each in a process of its own.
"""

import jax
from helpers import background_processes, start_readme_programs, start_sharded_steps

jax.config.update("jax_enable_x64", True)


def pytest_collection_finish(session):
    names = {item.path.name for item in session.items}
    if "test_sharding.py" in names:
        start_sharded_steps()
    if "test_readme.py" in names:
        start_readme_programs()


def pytest_sessionfinish(session, exitstatus):
    for process in background_processes():
        if process.poll() is None:
            process.kill()
            process.communicate()
