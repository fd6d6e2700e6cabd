"""Evaluation: metrics with confidence intervals, from predictions and truths.

stage (the one call the CLI makes) < classification, reliability, subgroups, segmentation <
bootstrap; render draws the segmentation overlays. Dice/IoU, the ECE and the decision rule
come from radflow.learning (overlap, calibration), which training uses too.
"""
