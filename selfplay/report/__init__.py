"""`selfplay compare`: several runs' evaluation metrics per iteration, read offline from their
run directories, as a terminal table, one PNG plot per metric and a self-contained HTML report
that answers first (headline panel, key curves) and details after (table, plots, examples).

- read.py      runs, metrics and confidence intervals, iteration 0, fork relations, eval samples
- decide.py    the judgements as pure functions: best run, intervals apart, constant metric, ticks
- headline.py  the headline panel, and the run grid with sparklines for many runs
- table.py     the terminal table (rich)
- plots.py     one PNG per metric (matplotlib, no display needed)
- html.py      the single-file report (plots inlined as data URIs)
"""
