"""The command line: the demo and the analyzer, small, end to end."""

import json
import os

from ggn_jax.cli import main

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "analyze")


def test_demo_writes_its_table_json_and_plot(tmp_path, capsys):
    code = main(["demo", "--seeds", "2", "--baseline-steps", "20", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    # The progress bar goes to stderr: 2 seeds and 2 baselines, so named.
    assert "paper demo (2 seeds, then Adam and GD)" in captured.err
    assert "4/4" in captured.err
    assert "| seed | pure GGN" in out and "global minimum (exact learning)" in out
    with open(tmp_path / "demo.json") as f:
        payload = json.load(f)
    for seed in payload["seeds"]:
        # The paper's claims on its own network: below 1e-15 within 20
        # iterations, near-quadratic order, Hessian = GGN at the end.
        assert seed["adaptive_iterations"] <= 20 and seed["pure_ggn_iterations"] <= 20
        assert seed["adaptive_order"] >= 1.8
        assert seed["hessian_ggn_gap_at_end"] < 1e-8
        assert seed["conditions"]["holds"]
    assert (tmp_path / "demo_convergence.png").stat().st_size > 10_000


def test_landscape_runs_small(tmp_path, capsys, monkeypatch):
    from ggn_jax.paper import experiments

    original = experiments.width_landscape
    monkeypatch.setattr(
        experiments, "width_landscape",
        lambda runs, progress: original(
            widths=(2, 24), runs=runs, adam_steps=50, ggn_steps=100, progress=progress
        ),
    )
    assert main(["demo", "--landscape", "--runs", "2", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "landscape.json") as f:
        payload = json.load(f)
    # Width 2 cannot fit 20 samples (P = 18 < T·K = 80); width 24 satisfies the conditions.
    assert payload["ggn_fraction"][0] == 0.0 and payload["conditions_fraction"][0] == 0.0
    assert payload["conditions_fraction"][1] == 1.0 and payload["ggn_fraction"][1] == 1.0
    assert (tmp_path / "landscape.png").exists()


def test_analyze_reports_conditions_and_the_end_point(capsys):
    assert main(["analyze", "--config", os.path.join(CONFIGS, "paper_demo.toml")]) == 0
    out = capsys.readouterr().out
    assert "rank J = T·K         : 40 of 40: holds" in out
    assert "critical point: global minimum (exact learning)" in out
    assert main(["analyze", "--config", os.path.join(CONFIGS, "narrow_tanh.toml")]) == 0
    out = capsys.readouterr().out
    assert "FAILS" in out and "global minimum" not in out


def test_analyze_with_a_bad_config_fails_with_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nsizes = [2, 10, 4]\nactivaton = "tanh"\n')
    assert main(["analyze", "--config", str(bad)]) == 2
    assert "unknown field(s) network.activaton" in capsys.readouterr().err
    mismatch = tmp_path / "mismatch.toml"
    mismatch.write_text("[network]\nsizes = [3, 10, 4]\n")
    assert main(["analyze", "--config", str(mismatch)]) == 2
    assert "does not fit the data" in capsys.readouterr().err
    # Values of the right type that no run can take, and a folder for a file.
    teacher = tmp_path / "teacher.toml"
    teacher.write_text('[network]\nsizes = [2, 10, 4]\n[data]\nkind = "teacher_student"\n'
                       "teacher_sizes = [2]\n")
    assert main(["analyze", "--config", str(teacher)]) == 2
    assert "teacher.toml: data.teacher_sizes: sizes must list at least two" in capsys.readouterr().err
    tol = tmp_path / "tol.toml"
    tol.write_text("[network]\nsizes = [2, 10, 4]\n[analysis]\ntol = nan\n")
    assert main(["analyze", "--config", str(tol)]) == 2
    assert "tol.toml: analysis.tol must be finite, got nan" in capsys.readouterr().err
    assert main(["analyze", "--config", str(tmp_path)]) == 2
    assert f"{tmp_path}: a folder, not a config file" in capsys.readouterr().err
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00sizes")
    assert main(["analyze", "--config", str(binary)]) == 2
    assert "binary.toml: not a TOML file (not UTF-8 text)" in capsys.readouterr().err


def test_analyze_prints_the_loss_of_the_point_it_analyses(tmp_path, capsys):
    """fit returns its lowest-loss parameters; the line about the fit gives
    their loss, which critical_point evaluates again (here the last iterate,
    after 26 steps of a 2-[5]-[5]-4 tanh net, sat at 5e-6, the lowest at 1e-12)."""
    config = tmp_path / "deep.toml"
    config.write_text('[network]\nsizes = [2, 5, 5, 4]\nactivation = "tanh"\n'
                      "[analysis]\nmax_steps = 26\n")
    assert main(["analyze", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    fitted = out.split("fitted with GGN:")[1].split("loss ")[1].split()[0]
    analysed = out.split("critical point:")[1].split("loss ")[1].split(",")[0]
    assert fitted == analysed, out


def test_bad_demo_arguments_are_named_before_the_run(tmp_path, capsys):
    folder_taken = tmp_path / "a_file"
    folder_taken.write_text("")
    assert main(["demo", "--seeds", "1", "--out", str(folder_taken)]) == 2
    assert "cannot be a folder" in capsys.readouterr().err
    assert main(["demo", "--landscape", "--out", str(folder_taken / "sub")]) == 2
    assert "cannot be a folder" in capsys.readouterr().err
    try:
        main(["demo", "--seeds", "abc"])
    except SystemExit as exit_:
        assert exit_.code == 2
    err = capsys.readouterr().err
    assert "must be a positive integer, got 'abc'" in err and "_positive_int" not in err
