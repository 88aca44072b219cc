"""The page's HTML fragments, rendered from the Jinja2 templates in ``ui/templates/``.

What the views draw can come from anyone (a replayed session file, a
provider's error message, a visitor's words), so markup lives only in the
templates and every value reaches them as a template variable, which Jinja
escapes (``autoescape``); nothing is marked safe. A name a template does not
receive is an error (``StrictUndefined``), not an empty string.

Templates are indented for reading. When one is loaded, each line of it is
stripped and the lines are joined (:class:`JoinedLines`), so the page gets
compact HTML with no whitespace between tags, as the views are styled for.
So a space that matters is written inside a line, and a Jinja tag is kept on one line.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined
from jinja2.ext import Extension


class JoinedLines(Extension):
    """Drop the template's own indentation and line breaks (never the values' text)."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return "".join(line.strip() for line in source.splitlines())


ENVIRONMENT = Environment(
    loader=PackageLoader("ui", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    extensions=[JoinedLines],
    # The templates ship with the code: compiled once per process, never re-read.
    auto_reload=False,
)


def render(template: str, **values: object) -> str:
    """``template`` (a file name in ``ui/templates/``) filled with ``values``, escaped."""
    return ENVIRONMENT.get_template(template).render(**values)
