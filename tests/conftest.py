"""Test configuration: float64 on, as the reference comparisons need it.

Tests of float32 behaviour create float32 arrays explicitly.

The 4-device sharding comparison (test_sharding.py) runs in a process of its
own; when its tests are collected, that process starts at once, so that it
overlaps the rest of the suite instead of adding to it.
"""

import jax
from helpers import background_processes, start_sharded_steps

jax.config.update("jax_enable_x64", True)


def pytest_collection_finish(session):
    if any(item.path.name == "test_sharding.py" for item in session.items):
        start_sharded_steps()


def pytest_sessionfinish(session, exitstatus):
    for process in background_processes():
        if process.poll() is None:
            process.kill()
            process.communicate()
