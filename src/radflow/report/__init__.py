"""Report: self-contained HTML pages from plain data."""
