"""Borderless rich tables with upper-case headers, the look of every list in the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# Named styles resolved here so tables render on any console, themed or not.
THEME_STYLES = {"secondary": "grey58"}


def make_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, styles: Any = None):  # noqa: ANN201
    """`rows` are cell sequences in column order; `styles` gives an optional style per row."""
    from rich.table import Table

    table = Table(box=None, show_header=True, header_style="bold", pad_edge=True)
    for col in columns:
        table.add_column(col.upper(), no_wrap=True)
    for i, row in enumerate(rows):
        style = styles[i] if styles else None
        style = THEME_STYLES.get(style, style) if style else None
        table.add_row(*[_cell(c) for c in row], style=style)
    return table


def _cell(value: Any):  # noqa: ANN202
    from rich.text import Text

    if value is None:
        return ""
    if isinstance(value, Text):
        return value
    return Text(str(value))


def properties_table(pairs: Iterable[tuple[str, str]]):  # noqa: ANN201
    """Two columns, no header, bold keys: the plan header of `apply` and `offer`."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_header=False, pad_edge=True)
    table.add_column(no_wrap=True)
    table.add_column()
    for key, value in pairs:
        table.add_row(Text(key, style="bold"), Text(str(value)))
    return table
