"""Plain-text and markdown tables of run summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import numbers
from typing import Any

Column = tuple[str, str, str]


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _cell(value: Any, spec: str) -> str:
  if value is None:
    return "-"
  if spec:
    try:
      return format(value, spec)
    except (TypeError, ValueError):
      # A text value in a numeric column, say an error marker: show it as is.
      pass
  return str(value)


def _cells(rows: Sequence[Mapping[str, Any]],
           columns: Sequence[Column]) -> tuple[list[list[str]], list[bool]]:
  """Formatted cells, and whether each column is right-aligned.

  Numbers are right-aligned so that their digits line up; a column is numeric
  when every value in it that is present is a number.
  """
  cells = [[_cell(row.get(key), spec) for key, _, spec in columns]
           for row in rows]
  right = []
  for key, _, _ in columns:
    present = [row.get(key) for row in rows if row.get(key) is not None]
    right.append(bool(present) and all(_is_number(v) for v in present))
  return cells, right


def _pad(text: str, width: int, right: bool) -> str:
  return text.rjust(width) if right else text.ljust(width)


def format_table(rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[Column]) -> str:
  """A plain-text table for a terminal.

  Args:
    rows: one mapping per row; a missing key reads as None.
    columns: ``(key, header, format spec)`` per column, e.g.
      ``("test_top1", "test top-1", ".2f")``; an empty spec means ``str``.

  Returns:
    The header, a rule of dashes and one line per row, columns separated by
    two spaces, numeric columns right-aligned and None shown as ``-``. Lines
    carry no trailing spaces.
  """
  cells, right = _cells(rows, columns)
  headers = [header for _, header, _ in columns]
  widths = [max([len(h)] + [len(r[j]) for r in cells])
            for j, h in enumerate(headers)]

  def line(texts: Sequence[str]) -> str:
    return "  ".join(_pad(t, w, r)
                     for t, w, r in zip(texts, widths, right)).rstrip()

  out = [line(headers), line(["-" * w for w in widths])]
  out += [line(r) for r in cells]
  return "\n".join(out)


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[Column]) -> str:
  """A GitHub-flavoured markdown table; same inputs as :func:`format_table`.

  Numeric columns are marked right-aligned in the separator row. Cells are
  padded too, so that the markdown source reads as a table as well.
  """
  cells, right = _cells(rows, columns)
  # A bare '|' would end the cell early.
  cells = [[c.replace("|", r"\|") for c in r] for r in cells]
  headers = [header.replace("|", r"\|") for _, header, _ in columns]
  # Separators need at least three dashes.
  widths = [max([len(h), 3] + [len(r[j]) for r in cells])
            for j, h in enumerate(headers)]

  def line(texts: Sequence[str]) -> str:
    return "| " + " | ".join(_pad(t, w, r) for t, w, r in
                             zip(texts, widths, right)) + " |"

  rule = "| " + " | ".join(("-" * (w - 1) + ":") if r else "-" * w
                           for w, r in zip(widths, right)) + " |"
  return "\n".join([line(headers), rule] + [line(r) for r in cells])
