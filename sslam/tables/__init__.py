"""The study's results as the paper's tables (Markdown, CSV, LaTeX), with paired-bootstrap significance, and its figures.

models.py: model ids; layouts.py: table specs and cells; significance.py: the paired bootstrap;
render.py: bold, markers and the files; paper_numbers.py: the published numbers; plots.py: figures;
aggregate.py: the `sslam tables` command. docs/tables.md describes them.
"""
