"""Explanations: methods, faithfulness scores and rendering of the maps.

stage.explain_model (the one call the CLI makes) uses methods, faithfulness and render.
"""
