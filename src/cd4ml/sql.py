"""Quoting for the SQL cd4ml builds for DuckDB, where names come from data (CSV headers, specs).

Column names cannot be bound as parameters, so they are quoted; a name is data and must never
end its own quoting: a header `a" FROM x; --` stays one identifier.
"""

from __future__ import annotations

from collections.abc import Iterable


def quote_ident(name: str, prefix: str = "") -> str:
    """A DuckDB identifier, `"` doubled inside; `prefix` is a table alias such as "r."."""
    return prefix + '"' + str(name).replace('"', '""') + '"'


def quote_idents(names: Iterable[str], prefix: str = "") -> str:
    """Comma-separated quoted identifiers."""
    return ", ".join(quote_ident(n, prefix) for n in names)


def quote_literal(value: object) -> str:
    """A SQL string literal (e.g. a file path in `read_parquet(...)`), `'` doubled inside."""
    return "'" + str(value).replace("'", "''") + "'"
