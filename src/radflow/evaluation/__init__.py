"""Evaluation: metrics with confidence intervals, from predictions and truths.

stage.evaluate (the one call the CLI makes) uses classification, reliability, subgroups and
segmentation, which use bootstrap; render draws the segmentation overlays. Dice/IoU, the ECE
and the decision rule come from radflow.learning (overlap, calibration), which training
uses too.
"""
