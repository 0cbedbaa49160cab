"""Aggregation of the evaluation results into the paper's tables (Markdown, CSV, LaTeX) and the study's figures."""
