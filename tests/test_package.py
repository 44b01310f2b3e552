"""The package stands on its own: it imports nothing from outside itself
but its dependencies, the old top-level names still work (with a warning),
and a non-editable install runs the benchmark from any directory."""

import ast
import os
import pkgutil
import subprocess
import sys
import tomllib
import warnings

import pytest

import ggn_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Import names of the distributions pyproject.toml declares.
IMPORT_NAMES = {"scikit-learn": "sklearn", "orbax-checkpoint": "orbax", "kfac-jax": "kfac_jax"}


def _declared() -> set[str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    names = set()
    for spec in specs:
        name = spec.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
        names.add(IMPORT_NAMES.get(name, name.replace("-", "_")))
    return names


def _imports(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_package_imports_only_itself_the_standard_library_and_its_dependencies():
    allowed = _declared() | set(sys.stdlib_module_names) | {"ggn_jax"}
    modules = [ggn_jax.__file__] + [
        module.module_finder.find_spec(module.name).origin
        for module in pkgutil.walk_packages(ggn_jax.__path__, "ggn_jax.")
    ]
    assert any(m.endswith(os.path.join("bench", "run.py")) for m in modules)
    for path in modules:
        outside = _imports(path) - allowed
        assert not outside, f"{os.path.relpath(path, ROOT)} imports {sorted(outside)}"


def test_the_paper_names_moved_and_the_old_ones_warn():
    with pytest.warns(DeprecationWarning, match="ggn_jax.mlp has moved to ggn_jax.paper.mlp"):
        old = ggn_jax.mlp
    assert old is ggn_jax.paper.mlp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ggn_jax.fit is ggn_jax.fit  # the optimiser's names do not warn
    assert not set(ggn_jax.__all__) & set(ggn_jax.paper.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ggn_jax.nope  # noqa: B018


def test_importing_the_optimiser_does_not_import_the_benchmarks():
    code = "import sys, ggn_jax; print(any(m.startswith('ggn_jax.bench') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # The submodules the README names as ggn_jax.adapters / ggn_jax.pde
    # come on first use after a plain `import ggn_jax`.
    code = ("import ggn_jax; print(ggn_jax.adapters.from_nnx.__name__, "
            "ggn_jax.pde.laplacian.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["from_nnx", "laplacian"]


def test_a_wheel_installed_in_a_fresh_venv_runs_the_benchmark(tmp_path):
    """Build the wheel, install it (no editable link) into a new venv that
    borrows the test environment's dependencies, and run ``ggn-jax bench``
    from a directory that has no configs/."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(dist), ROOT], check=True, capture_output=True)
    wheel = next(dist.glob("ggn_jax-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies, by path only: a .pth line adds a directory without
    # running the .pth files inside it, so the editable ggn_jax stays out.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    with open(os.path.join(site, "_deps.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    script = venv / "bin" / "ggn-jax"

    def run(*args):
        return subprocess.run([str(script), *args], cwd=work, env=env, capture_output=True, check=False,
                              text=True, timeout=600)

    where = subprocess.run([str(python), "-c", "import ggn_jax; print(ggn_jax.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(site), where.stdout  # the wheel's copy
    listed = run("bench", "--list")
    assert listed.returncode == 0, listed.stderr
    assert "over_parameterised" in listed.stdout and "pinn/poisson2d" in listed.stdout
    smoke = run("bench", "classic_rosenbrock", "--smoke", "--quiet")
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    assert (work / "results" / "bench" / "classic_rosenbrock.json").exists()
    assert "| classic_rosenbrock |" in smoke.stdout  # the summary table
