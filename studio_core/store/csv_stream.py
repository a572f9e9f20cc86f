"""Run rows to CSV straight from a cursor: what ``RunStore.export_csv`` writes, with one chunk of rows in memory.

The file is byte for byte what ``runs_frame(...).to_csv(path, index=False)`` writes (tests/test_store_scale.py
compares them), because pandas writes through Python's ``csv`` module too and prints the values SQLite hands back
the way ``csv.writer`` does (an integer as ``str``, a float as its ``repr``, NULL as an empty field), with one
exception: pandas types a column by the values it sees, and a column of whole numbers with a NULL or a float among
them becomes a float column that prints "3.0" where the integer was 3. Which columns do so depends on the whole
selection, not on a chunk, so ``float_columns`` finds them first (one pass of ``typeof`` over the columns whose
declared type lets SQLite keep integers: neither TEXT, which turns numbers into text, nor REAL, which turns them
into floats), and the select reads them ``CAST(... AS REAL)``.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from typing import IO, Iterable, Sequence

__all__ = ["CHUNK_ROWS", "float_columns", "select_list", "write_csv"]

CHUNK_ROWS = 2000  # rows fetched at a time: a few MB of a wide run row's values
_NO_INTEGERS = ("TEXT", "CHAR", "CLOB", "REAL", "FLOA", "DOUB")  # declared types SQLite keeps no integer in


def _may_hold_integers(declared: str) -> bool:
    """Whether SQLite may keep whole numbers as integers in a column of this declared type (its affinity is
    INTEGER, NUMERIC or BLOB; see SQLite's "Determination Of Column Affinity")."""
    return not any(word in declared.upper() for word in _NO_INTEGERS)


def float_columns(conn: sqlite3.Connection, table: str, declared: dict[str, str], where: str | None,
                  params: Sequence) -> list[str]:
    """The columns pandas would read as floats over the whole selection although they hold integers: those that may
    hold integers and hold a NULL or a float beside them, and no text (text makes the column ``object``, which
    prints each value as it is). ``table`` and ``declared`` (column -> declared type) are the store's own names."""
    columns = [c for c, kind in declared.items() if _may_hold_integers(kind)]
    if not columns:
        return []
    # per column: 2 when some value is text or bytes, else 1 when one is NULL or a float, else 0 (integers only)
    checks = ", ".join(f"max(CASE typeof(\"{c}\") WHEN 'integer' THEN 0 WHEN 'real' THEN 1 WHEN 'null' THEN 1 "
                       "ELSE 2 END)" for c in columns)
    row = conn.execute(f"SELECT {checks} FROM {table}" + (f" WHERE {where}" if where else ""), list(params)
                       ).fetchone()
    return [c for c, kind in zip(columns, row) if kind == 1]


def select_list(columns: Iterable[str], as_float: Iterable[str]) -> str:
    """The select list of ``columns`` (the store's own names) with those of ``as_float`` read as floats."""
    floats = set(as_float)
    return ", ".join(f'CAST("{c}" AS REAL) AS "{c}"' if c in floats else f'"{c}"' for c in columns)


def write_csv(conn: sqlite3.Connection, sql: str, params: Iterable, out: IO[str], chunk_rows: int = CHUNK_ROWS) -> int:
    """Write the rows of ``sql`` to ``out`` (a text file opened with ``newline=""``) as CSV with a header row, in the
    dialect ``DataFrame.to_csv`` uses, ``chunk_rows`` rows at a time; returns the number of rows."""
    cursor = conn.execute(sql, list(params))
    writer = csv.writer(out, lineterminator=os.linesep, quoting=csv.QUOTE_MINIMAL, quotechar='"', doublequote=True)
    writer.writerow([d[0] for d in cursor.description])
    n = 0
    while rows := cursor.fetchmany(chunk_rows):
        writer.writerows(rows)
        n += len(rows)
    return n
