"""Report: self-contained HTML pages from plain data.

pages (Jinja2, the calls the CLI makes) < views (contexts and view models) < figures
(matplotlib) < formatting.
"""
