"""Result files written row by row, so that a long run that dies loses nothing it had finished.

A :class:`Journal` is a JSON-lines (``.jsonl``: a header object, then one object per row) or CSV file (a
header row of column names, then one row per line). Each finished row is appended and flushed at once.
Opening an existing file reads the rows it has (a last line cut short by a crash is dropped); ``resume``
says whether those rows may be skipped; without it, a file that already holds rows of this run is an
error rather than being overwritten or written twice.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os

__all__ = ["Journal", "encode_float"]


def encode_float(value) -> object:
    """A float for JSON: finite values as numbers, infinities and NaN as the strings "inf", "-inf", "nan"."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


class Journal:
    """Append-only result file. ``key``: the fields that identify a row (e.g. ``("method", "example")``);
    ``header``: a dict (JSONL: the settings that must match when the file is reopened) or a list of column
    names (CSV). ``done``: key -> row of the rows already in the file."""

    def __init__(self, path, key, header, resume=False, scope=None):
        self.path, self.key = os.fspath(path), tuple(key)
        self.csv = self.path.lower().endswith(".csv")
        self.header = list(header) if self.csv else json.loads(json.dumps(dict(header)))  # as read back
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"out: folder {folder!r} does not exist")
        self.done = {}
        existing = self._read() if os.path.isfile(self.path) and os.path.getsize(self.path) else None
        mine = {k: row for k, row in (existing or {}).items() if scope is None or all(row.get(f) == v for f, v in
                                                                                     scope.items())}
        if mine and not resume:
            raise ValueError(f"out: {self.path} already has {len(mine)} row(s) of this run; pass resume=True "
                             f"(--resume) to continue it, or write to another file")
        self.done = mine
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        if existing is None:
            self._file.write(self._format_header())
            self._file.flush()

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict:
        with open(self.path, "rb") as f:
            data = f.read()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a row cut short by a crash: drop it, the run redoes it
            with open(self.path, "r+b") as f:
                f.truncate(cut)
            data = data[:cut]
        lines = data.decode("utf-8").splitlines()
        if not lines:
            return {}
        header, rows = self._parse(lines)
        if header != self.header:
            diff = self._difference(header)
            raise ValueError(f"out: {self.path} was written by a different run ({diff}); write to another file")
        return {self.row_key(row): row for row in rows}

    def _parse(self, lines):
        if self.csv:
            table = list(csv.reader(lines))
            return table[0], [dict(zip(table[0], r)) for r in table[1:] if r]
        try:
            parsed = [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"out: {self.path} is not a JSON-lines file ({err})") from None
        return parsed[0].get("header"), parsed[1:]

    def _difference(self, header):
        if self.csv or not isinstance(header, dict):
            return f"header {header!r}, expected {self.header!r}"
        keys = sorted(k for k in set(header) | set(self.header) if header.get(k) != self.header.get(k))
        return "; ".join(f"{k}: {header.get(k)!r} in the file, {self.header.get(k)!r} now" for k in keys)

    def row_key(self, row) -> tuple:
        return tuple(str(row.get(f)) for f in self.key)

    # ------------------------------------------------------------------ writing
    def _format_header(self) -> str:
        if self.csv:
            return self._csv_line(self.header)
        return json.dumps({"header": self.header}) + "\n"

    @staticmethod
    def _csv_line(cells) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(cells)
        return buffer.getvalue().replace("\r\n", "\n")

    def write(self, row: dict) -> None:
        """Append ``row`` and flush it to the operating system."""
        line = self._csv_line([row.get(c, "") for c in self.header]) if self.csv else json.dumps(row) + "\n"
        self._file.write(line)
        self._file.flush()
        self.done[self.row_key(row)] = row

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
