"""Text that will not decode: a value stored as TEXT whose bytes are not valid UTF-8 (a flipped bit, a
torn write, a tool that wrote Latin-1) must not break the Runs tab and the CSV for everyone.

Two defences:

* every connection the store makes reads text with ``decode_tolerantly`` (as its ``text_factory``), so no
  read can raise on a bad byte: the value shows U+FFFD where the bytes were;
* at open, ``find_undecodable`` scans every TEXT value of the store's tables; a writable store then moves
  each such row, whole, into the ``quarantine`` table (``quarantine_rows``: its raw values as JSON, an
  undecodable text as ``{"text_hex": ...}``), in one transaction, and says so in ``RunStore.start_notes``.
  A read-only store only reports them. The migrations' own bookkeeping table is not scanned: moving one
  of its rows would run a migration again.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

__all__ = ["BadRow", "decode_tolerantly", "find_undecodable", "note", "quarantine_rows"]

KINDS = {"runs": "run", "refs": "reference", "sweeps": "sweep"}


def decode_tolerantly(raw: bytes) -> str:
    """A TEXT value as str, with U+FFFD for bytes that are not UTF-8 (a connection's ``text_factory``)."""
    return raw.decode("utf-8", "replace")


def _decode_error(raw: bytes | None) -> str | None:
    """Why ``raw`` is not UTF-8 (Python's words: the byte, its position, what is wrong), None if it is."""
    if raw is None:
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte 0x{raw[exc.start]:02x} at {exc.start}: {exc.reason}"
    return None


def _utf8_ok(raw: bytes | None) -> bool:
    return _decode_error(raw) is None


@dataclass(frozen=True)
class BadRow:
    """A row of ``table`` holding TEXT that is not valid UTF-8, in ``columns``."""

    table: str
    rowid: int
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{KINDS[self.table]} {self.rowid}" if self.table in KINDS else f"{self.table} row {self.rowid}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({_quote(table)})")]


def _text_bytes(column: str) -> str:
    """SQL for a column's raw bytes when it holds TEXT, else NULL (numbers and blobs are never undecodable)."""
    return f"CASE WHEN typeof({_quote(column)}) = 'text' THEN CAST({_quote(column)} AS BLOB) END"


def find_undecodable(conn: sqlite3.Connection, tables: tuple[str, ...]) -> list[BadRow]:
    """Every row of ``tables`` (those present) with a TEXT value that is not valid UTF-8. Each row's text is
    joined in SQL, with a comma between values so no two halves of a character can meet, and decoded once;
    only a row that fails is looked at column by column."""
    conn.create_function("studio_utf8_ok", 1, _utf8_ok, deterministic=True)
    present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    bad = []
    for table in (t for t in tables if t in present):
        columns = _columns(conn, table)
        joined = " || ',' || ".join(f"coalesce({_text_bytes(c)}, x'')" for c in columns)
        rowids = [r[0] for r in conn.execute(
            f"SELECT rowid FROM {_quote(table)} WHERE NOT studio_utf8_ok(CAST({joined} AS BLOB)) ORDER BY rowid")]
        for rowid in rowids:
            raw = conn.execute(f"SELECT {', '.join(_text_bytes(c) for c in columns)} FROM {_quote(table)} "
                               "WHERE rowid = ?", [rowid]).fetchone()
            bad.append(BadRow(table, rowid, tuple(c for c, v in zip(columns, raw) if not _utf8_ok(v))))
    return bad


def _raw_row(conn: sqlite3.Connection, bad: BadRow) -> tuple[dict, list[str]]:
    """The row's values as JSON-ready data (TEXT as str, or ``{"text_hex"}`` when it will not decode; BLOB
    as ``{"blob_hex"}``; numbers and NULL as they are), and why each undecodable value is not UTF-8."""
    columns = _columns(conn, bad.table)
    picks = ", ".join(f"typeof({_quote(c)}), CASE WHEN typeof({_quote(c)}) IN ('text', 'blob') "
                      f"THEN CAST({_quote(c)} AS BLOB) ELSE {_quote(c)} END" for c in columns)
    row = conn.execute(f"SELECT {picks} FROM {_quote(bad.table)} WHERE rowid = ?", [bad.rowid]).fetchone()
    out: dict = {"rowid": bad.rowid}
    reasons = []
    for column, kind, value in zip(columns, row[0::2], row[1::2]):
        if kind == "text" and (why := _decode_error(value)):
            out[column] = {"text_hex": value.hex()}
            reasons.append(f"{column} is not valid UTF-8 ({why})")
        elif kind == "text":
            out[column] = value.decode("utf-8")
        elif kind == "blob":
            out[column] = {"blob_hex": value.hex()}
        else:
            out[column] = value
    return out, reasons


def note(bad: BadRow, moved: bool) -> str:
    """One line for the person starting the studio: which row, which columns, and where it is now."""
    where = ("moved to the quarantine table (kept whole)" if moved else
             "its bad bytes show as \ufffd (open the study read-write to move the row to the quarantine table)")
    columns = f"column {bad.columns[0]} is" if len(bad.columns) == 1 else f"columns {', '.join(bad.columns)} are"
    return f"{bad.name}: {columns} not valid UTF-8; {where}"


def quarantine_rows(conn: sqlite3.Connection, rows: list[BadRow], when: str) -> list[str]:
    """Copy each row into ``quarantine`` and delete it from its table; the caller holds the write
    transaction, so the rows move together or not at all. Returns one note per row."""
    for bad in rows:
        raw, reasons = _raw_row(conn, bad)
        conn.execute(
            "INSERT INTO quarantine (table_name, row_key, column_name, raw_json, reason, quarantined_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [bad.table, str(bad.rowid), ", ".join(bad.columns), json.dumps(raw, sort_keys=True), "; ".join(reasons),
             when])
        conn.execute(f"DELETE FROM {_quote(bad.table)} WHERE rowid = ?", [bad.rowid])
    return [note(bad, moved=True) for bad in rows]
