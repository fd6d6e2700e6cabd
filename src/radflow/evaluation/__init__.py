"""Evaluation: metrics with confidence intervals, from predictions and truths."""
