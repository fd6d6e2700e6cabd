"""Core: params, the manifest, file I/O, image readers and writers; imports nothing of radflow
above it.
"""
