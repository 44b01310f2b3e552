"""``ggn-jax bench`` as a whole (`ggn_jax.bench.suite`, `.summary`,
`.catalog`): a user's own TOML by path, the summary table against the JSON
rows, interruption, the listing and the errors."""

import json
import os
import statistics

import pytest

from ggn_jax.bench import catalog, suite
from ggn_jax.bench import run as bench_run

# A user's own config: small enough to run in full, with ggn_jax rows and
# every least-squares peer (kfac-jax fails on jax ≥ 0.9.2: a failed row).
USER_CONFIG = """
[problem]
kind = "teacher_student"
num_samples = 16
sizes = [2, 8, 1]
teacher_sizes = [2, 3, 1]

[run]
target_loss = 1e-4
max_steps = 40
eval_every = 5
seeds = [0, 1]
repeats = 3

[output]
plots = false

[[optimizers]]
kind = "ggn"
label = "ggn_jax"

[[optimizers]]
kind = "ggn_fit"
label = "ggn_jax fit"

[[optimizers]]
kind = "scipy_trf"
label = "scipy trf"

[[optimizers]]
kind = "adam"
label = "adam 1e-2"
learning_rate = 1e-2

[[optimizers]]
kind = "optimistix_lm"
label = "optimistix"

[[optimizers]]
kind = "jaxopt_lm"
label = "jaxopt"

[[optimizers]]
kind = "lbfgs"
label = "lbfgs"

[[optimizers]]
kind = "kfac"
label = "kfac-jax"
"""


@pytest.fixture
def user_config(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(USER_CONFIG)
    return str(path)


def _median_times(payload):
    """Per label, the median over the seeds that reached the target of the
    time to it (None where none did), read off the raw JSON rows."""
    out = {}
    for label, entry in payload["results"].items():
        reached = [r["time_to_target"] for r in entry.get("seeds", {}).values() if r["reached"]]
        out[label] = statistics.median(reached) if reached else None
    return out


def test_the_summary_ratio_is_the_one_computed_from_the_json_rows(user_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert suite.main([user_config, "--quiet", "--repeats", "1", "--max-seconds", "20",
                       "--out-dir", str(out)]) == 0
    payload = json.loads((out / "mine.json").read_text())
    assert (payload["run"]["repeats"], payload["run"]["max_seconds"]) == (1, 20.0)
    row = json.loads((out / "summary.json").read_text())["rows"][0]
    times = _median_times(payload)
    kinds = {label: entry["kind"] for label, entry in payload["results"].items()}
    ours = {k: t for k, t in times.items() if t is not None and kinds[k].startswith("ggn")}
    peers = {k: t for k, t in times.items() if t is not None and not kinds[k].startswith("ggn")}
    assert ours and peers, times  # the config is chosen so that both reach it
    best_ours, best_peer = min(ours, key=ours.get), min(peers, key=peers.get)
    assert (row["ggn_row"], row["peer_row"]) == (best_ours, best_peer)
    assert row["speedup"] == pytest.approx(peers[best_peer] / ours[best_ours], rel=1e-12)
    for label, entry in payload["results"].items():  # every peer ran, or says why not
        assert "seeds" in entry or entry["kind"] == "kfac" or "not installed" in entry.get(
            "skipped", ""), (label, entry)
    printed = capsys.readouterr().out
    assert f"{peers[best_peer] / ours[best_ours]:.2f}×" in printed
    assert (out / "summary.md").read_text() in printed
    # The device and the curvature rate are recorded with the rows.
    assert payload["device"]["platform"] == "cpu" and payload["device"]["jax"]
    rate = payload["curvature_rate"]
    assert rate["what"].startswith("Gram matrix") and rate["seconds"] > 0
    assert rate["flops"] is None or rate["flop_s"] == pytest.approx(rate["flops"] / rate["seconds"])


def test_where_no_peer_reached_the_target_the_bound_is_the_shortest_peer_run():
    """ggn_jax reached the target in 2 ms; Adam stopped short of it after
    14 ms, L-BFGS after 78 ms. The fastest peer would have needed more than
    14 ms, so the speed-up is at least 7×, not 39× (78 / 2)."""
    from ggn_jax.bench.summary import _row, markdown

    kinds = {"ggn": "ggn", "Adam": "adam", "L-BFGS": "lbfgs"}
    row = _row("c", "loss ≤ 1e-9", {"ggn": 0.002}, {"ggn": 0.002, "Adam": 0.014, "L-BFGS": 0.078},
               kinds)
    assert row["lower_bound"] and row["speedup"] == pytest.approx(7.0)
    assert "≥ 7.00×" in markdown([row], "cpu")
    # Where a peer reached it (L-BFGS at 50 ms) and the others that missed
    # ran longer (Adam, 80 ms), the ratio is the fastest reaching peer's.
    row = _row("c", "t", {"ggn": 0.002, "L-BFGS": 0.05}, {"ggn": 0.002, "Adam": 0.08,
                                                          "L-BFGS": 0.05}, kinds)
    assert row["speedup"] == pytest.approx(25.0)
    assert not row["lower_bound"] and not row["upper_bound"]
    assert "| 25.00× |" in markdown([row], "cpu")
    # Adam stopped short at 14 ms: it might have reached the target before
    # 50 ms, so the speed-up lies in (7, 25]: an upper bound.
    row = _row("c", "t", {"ggn": 0.002, "L-BFGS": 0.05}, {"ggn": 0.002, "Adam": 0.014,
                                                          "L-BFGS": 0.05}, kinds)
    assert row["upper_bound"] and row["speedup"] == pytest.approx(25.0)
    assert "≤ 25.00×" in markdown([row], "cpu")


def test_an_interrupted_run_keeps_its_finished_rows(user_config, tmp_path, monkeypatch):
    real = bench_run.run_whole_optimizer

    def interrupted_at_scipy(problem, spec, run, seed):
        if spec["kind"] == "scipy_trf":
            raise KeyboardInterrupt
        return real(problem, spec, run, seed)

    monkeypatch.setattr(bench_run, "run_whole_optimizer", interrupted_at_scipy)
    out = tmp_path / "out"
    assert suite.main([user_config, "--quiet", "--repeats", "1", "--out-dir", str(out)]) == 130
    payload = json.loads((out / "mine.json").read_text())
    assert payload["interrupted"] == "scipy trf"
    assert list(payload["results"]) == ["ggn_jax", "ggn_jax fit"]  # the finished rows
    for entry in payload["results"].values():
        assert set(entry["seeds"]) == {"0", "1"}
    assert "**Interrupted** in 'scipy trf'" in (out / "mine.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"][0]["interrupted"] == "scipy trf"
    assert "(interrupted)" in (out / "summary.md").read_text()


def test_select_runs_only_the_optimisers_whose_label_matches(user_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert suite.main([user_config, "--quiet", "--repeats", "1", "--select", "^ggn_jax$|adam",
                       "--out-dir", str(out)]) == 0
    payload = json.loads((out / "mine.json").read_text())
    assert list(payload["results"]) == ["ggn_jax", "adam 1e-2"]
    assert [spec["label"] for spec in payload["optimizers"]] == ["ggn_jax", "adam 1e-2"]
    # A PINN config is filtered the same way (checked before it would run).
    kind, config = suite._load("pinn/poisson2d", smoke=True, select="ENGD")
    assert kind == "pinn" and [s["label"] for s in config["optimizers"]] == [
        "ENGD (Müller & Zeinhofer 2023)", "ENGD, its step lengths one at a time (lax.map)",
        "ENGD, Cholesky solve in place of lstsq"]
    capsys.readouterr()
    assert suite.main([user_config, "--select", "sgd", "--out-dir", str(out / "x")]) == 2
    err = capsys.readouterr().err
    assert "--select 'sgd' matches no optimiser; its labels: 'ggn_jax', 'ggn_jax fit'" in err
    assert suite.main([user_config, "--select", "(", "--out-dir", str(out / "x")]) == 2
    assert "--select '(' is not a regular expression" in capsys.readouterr().err
    assert not (out / "x").exists()


def test_list_names_every_shipped_config(capsys):
    assert suite.main(["--list"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == catalog.shipped()
    assert len(printed) == len(catalog.shipped()) >= 17


def test_every_config_is_checked_before_any_runs(user_config, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(USER_CONFIG.replace('kind = "adam"', 'kind = "sgd"'))
    out = tmp_path / "out"
    assert suite.main([user_config, str(bad), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: optimizers[3].kind = 'sgd'; allowed: 'ggn'" in err
    assert not out.exists()  # nothing ran
    # A value that needs the problem to be judged: judged before any runs too.
    big_batch = tmp_path / "big_batch.toml"
    big_batch.write_text('[problem]\nkind = "teacher_student"\nnum_samples = 16\n'
                         'sizes = [2, 8, 1]\n[run]\ntarget_loss = 1e-4\nbatch_size = 64\n'
                         '[[optimizers]]\nkind = "adam"\n')
    assert suite.main([user_config, str(big_batch), "--out-dir", str(out)]) == 2
    assert (f"{big_batch}: run.batch_size (64) exceeds the 16 training samples of its problem"
            in capsys.readouterr().err)
    assert not out.exists()
    with pytest.raises(SystemExit):
        suite.main([])  # neither a name nor --all
    assert suite.main([user_config, "--repeats", "0"]) == 2
    assert "--repeats ≥ 1" in capsys.readouterr().err
    assert suite.main(["classic_beale", "--device", "tpu", "--out-dir", str(out)]) == 2
    assert "--device tpu: JAX has no such device here" in capsys.readouterr().err


def test_a_shipped_name_resolves_to_a_file_in_the_package():
    path = catalog.resolve("pinn/poisson2d")
    assert os.path.isfile(path) and path.endswith(os.path.join("configs", "pinn", "poisson2d.toml"))
    assert catalog.resolve("over_parameterised.toml") == catalog.resolve("over_parameterised")
    with pytest.raises(FileNotFoundError, match="not one of the shipped configs"):
        catalog.resolve("mnist")
