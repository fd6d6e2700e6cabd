"""The report pages: Jinja2 renders the view models (radflow.report.views) into one
self-contained HTML page per modality and an index page. Autoescaping is on for every
template and a missing variable is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from radflow import __version__
from radflow.report.views import (
    IndexCard,
    IndexContext,
    ModalityContext,
    index_cards_view,
    modality_view,
    now,
    short_digest,
)

TEMPLATES = Path(__file__).with_name("templates")


def _environment() -> Environment:
    """Autoescape on for every template and string; a missing variable is an error."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_modality_page(context: ModalityContext) -> str:
    """The self-contained HTML report of one modality."""
    return _environment().get_template("modality.html").render(**modality_view(context))


def render_index(cards: Sequence[IndexCard], context: IndexContext | None = None) -> str:
    """The index page: a classifier and a segmenter card per modality, with key metrics
    (with CIs) and links into the modality page."""
    context = context or {}
    return (
        _environment()
        .get_template("index.html")
        .render(
            title=context.get("title") or "radflow reports",
            generated_at=context.get("generated_at") or now(),
            params_hash=context.get("params_hash"),
            code_digest=context.get("code_digest") and short_digest(context["code_digest"]),
            git_revision=context.get("git_revision"),
            versions=sorted((context.get("versions") or {}).items()),
            cards=[view for card in cards for view in index_cards_view(card)],
            radflow_version=__version__,
        )
    )
