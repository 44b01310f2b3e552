"""Test configuration: float64 on, as the reference comparisons need it.

Tests of float32 behaviour create float32 arrays explicitly.

The 4-device sharding comparison (test_sharding.py) and the README's code
blocks (test_readme.py) run in processes of their own. In a serial run
(``-n 0``) they start as soon as the files are collected, so that they
overlap the rest of the suite instead of adding to it. With pytest-xdist
(``-n``, the default), where each worker collects every file but runs only
some, the worker that runs one of those files starts its processes when it
reaches the first test that needs them (``--dist loadfile`` keeps a file on
one worker), while the other workers go on with other files.
"""

import os

import jax
from helpers import (
    background_processes,
    compile_cache_settings,
    start_readme_programs,
    start_sharded_steps,
)

jax.config.update("jax_enable_x64", True)
# This process's folder of the session's compile cache (../conftest.py).
for _name, _value in compile_cache_settings(os.environ.get("PYTEST_XDIST_WORKER", "main")).items():
    jax.config.update(_name.lower(), _value)


def _in_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_collection_finish(session):
    if _in_xdist_worker(session.config):
        return
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
