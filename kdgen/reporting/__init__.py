"""What a run's numbers say, for people: typed results, statistics, tables, the verdict, plots and pages.

- :mod:`~kdgen.reporting.results`: ``Results``, a run's rows loaded once (cells, paired values, the
  comparisons its arms ask for, the model to keep); every reader below starts from it.
- :mod:`~kdgen.reporting.statistics`: paired t-tests, intervals, detectable effects, slopes.
- :mod:`~kdgen.reporting.formatting`: how numbers, differences, p-values and tables read everywhere.
- :mod:`~kdgen.reporting.tables`, :mod:`~kdgen.reporting.verdict`, :mod:`~kdgen.reporting.equal_cost`:
  the report's tables and its answer in words.
- :mod:`~kdgen.reporting.page`, :mod:`~kdgen.reporting.sweep_page`, :mod:`~kdgen.reporting.plots`:
  report.md/html, the sweep page and the figures.

Reports are functions of results.json (and the run's config): ``kdgen report DIR`` rebuilds them at any time.
"""
