"""Data stages: ingest, anonymise, preprocess, split (and the demo cohort); items in, items or
quarantine entries out.
"""
