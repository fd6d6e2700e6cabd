"""Explanations: methods, faithfulness scores and rendering of the maps.

stage (the one call the CLI makes) < methods, faithfulness, render.
"""
