"""The benchmark runner, shipped with the package: ``ggn-jax bench``.

* `catalog`: the shipped configs (package data) by name;
* `config`: an optimiser benchmark's TOML schema, checked on load;
* `problems`, `optimizers`: the problems and every optimiser's driver
  (ggn_jax and the peers; a peer that is not installed is a row that says
  so);
* `run`: one config, timed side by side, to JSON, Markdown and a plot;
* `pinn`, `pde_problems`: the PINN benchmarks against ENGD, Adam, L-BFGS;
* `summary`, `suite`: several configs and the one-line-per-config table.

The peers come with the ``bench`` extra: ``pip install "ggn_jax[bench]"``.
"""
