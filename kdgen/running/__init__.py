"""Running many models and keeping them on disk: generations, runs, sweeps, transfer, inference.

- :mod:`~kdgen.running.generations`: ``GenerationsRunner``, every (arm, seed, generation) unit of a run,
  in chain order, teachers loaded from earlier units.
- :mod:`~kdgen.running.runner`: ``run_pipeline``, a whole run (one or many processes) from config to report.
- :mod:`~kdgen.running.run_folder`: the run folder's files (config.yaml, results.json, checkpoints,
  in-progress state) and their single writer.
- :mod:`~kdgen.running.unit_cache`: finished units shared between runs, keyed by settings and code revisions.
- :mod:`~kdgen.running.sweep`: ``kdgen sweep``, the grid points of a :mod:`kdgen.sweep_plan` run with unit reuse.
- :mod:`~kdgen.running.transfer`: frozen models' features probed on other data.
- :mod:`~kdgen.running.inference`: ``kdgen.load`` and ``kdgen predict``.
"""
