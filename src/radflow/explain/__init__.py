"""Explanations: methods, faithfulness scores and rendering of the maps."""
