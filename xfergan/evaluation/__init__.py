"""Evaluation and statistics on plain data: arm comparisons for reports."""
