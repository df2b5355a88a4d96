"""`selfplay compare`: several runs' evaluation metrics per iteration, read offline from their
run directories, as a terminal table, one PNG plot per metric and a self-contained HTML report
with example generations side by side.

- read.py   runs, metrics and confidence intervals, fork relations, eval samples
- table.py  the terminal table (rich)
- plots.py  one PNG per metric (matplotlib, no display needed)
- html.py   the single-file report (plots inlined as data URIs)
"""
