"""Report: self-contained HTML pages from plain data.

pages (Jinja2; the calls the CLI makes) uses views (contexts and view models), which use
figures (matplotlib); both format values with formatting.
"""
