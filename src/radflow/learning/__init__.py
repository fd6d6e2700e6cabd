"""Learning engine: the fit loop, input pipeline, model registry and weights; the classifier
and segmenter tasks use it.
"""
