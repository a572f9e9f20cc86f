"""What the page keeps of a growing study between refreshes: its successful runs as read so far, brought up to
date by reading only the runs new or finished since the last look.

A study of 100k runs takes seconds to read whole, and the Frontier is redrawn every time a run lands. A finished
run's row never changes (``RunStore``: a row is updated only while it is ``running``), so the successful runs read
once stay right, and a refresh reads only the runs whose id is past the last one seen or that finished since
(``RunStore.runs_since``). Anything else (a run gone from the study, one whose finish was written late, a study
replaced under the same folder) shows as a count or a sum of ids that no longer adds up, and then everything is read
again, and
``generation`` moves on so that what was derived from the old rows (``plots.RunMemo``) is dropped too.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from studio_core.store.store import RunStore

__all__ = ["KeptRuns", "select"]


class KeptRuns:
    """The study's ``ok`` runs (``columns`` of them), oldest first as ``RunStore.runs_frame`` gives them, kept up to
    date incrementally. Safe to share between the page's threads."""

    def __init__(self, store: RunStore, columns: Iterable[str]):
        self.store = store
        self.columns = tuple(columns)
        self.generation = 0  # moves on whenever the runs are read again from scratch
        self.last_read = 0  # rows the last refresh read from the store (all of them, or the new ones)
        self._frame: pd.DataFrame | None = None
        self._id_sum = 0  # of the runs kept: with their count, what the study's selection must still add up to
        self._mark: tuple | None = None
        self._lock = threading.Lock()

    def frame(self) -> pd.DataFrame:
        """Every ``ok`` run, up to date: the runs kept, with those new or finished since the last call added."""
        with self._lock:
            if self._frame is None:
                return self._read_all(first=True)
            delta = self.store.runs_since(self._mark, matching={"status": "ok"}, columns=self.columns)
            kept_ids = self._frame["id"].to_numpy()
            new = delta.frame[~_sorted_contains(kept_ids, delta.frame["id"].to_numpy())]
            id_sum = self._id_sum + int(new["id"].sum())
            if (len(self._frame) + len(new), id_sum) != (delta.total, delta.id_sum):  # a run left, or was missed
                return self._read_all(first=False)
            self._mark, self._id_sum, self.last_read = delta.mark, id_sum, len(delta.frame)
            if len(new):
                self._frame = _appended(self._frame, new)
            return self._frame

    def _read_all(self, first: bool) -> pd.DataFrame:
        delta = self.store.runs_since(None, matching={"status": "ok"}, columns=self.columns)
        self._frame, self._mark, self.last_read = delta.frame, delta.mark, len(delta.frame)
        self._id_sum = int(self._frame["id"].sum())
        if not first:
            self.generation += 1
        return self._frame


def _sorted_contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each of ``ids``, whether it is in ``sorted_ids`` (ascending): one binary search each."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    at = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return sorted_ids[at] == ids


def _appended(kept: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``kept`` with the ``new`` runs, in id order, each column typed as one read of all of them would type it."""
    if kept.empty:
        return new.reset_index(drop=True)
    differ = [c for c in new.columns if new[c].dtype != kept[c].dtype]
    if differ:  # (astype rebuilds a frame column by column: only when a type is to change)
        new = new.astype({c: _whole_type(kept[c], new[c]) for c in differ})
        empty = {c: new[c].dtype for c in differ if new[c].dtype != kept[c].dtype and kept[c].isna().all()}
        kept = kept.astype(empty) if empty else kept
    out = pd.concat([kept, new], ignore_index=True)
    if new["id"].min() < kept["id"].max():  # a run that started earlier finished later: keep the id order
        out = out.sort_values("id", kind="stable", ignore_index=True)
    return out


def _whole_type(kept: pd.Series, new: pd.Series):
    """The type a read of both parts would give a column whose parts were typed apart: a part with no value at all
    takes the other's type (whole numbers with a missing value read as floats); else as ``concat`` joins them."""
    if new.isna().all():
        return "float64" if pd.api.types.is_integer_dtype(kept.dtype) else kept.dtype
    if kept.isna().all() and pd.api.types.is_integer_dtype(new.dtype):
        return "float64"
    return new.dtype


def select(frame: pd.DataFrame, matching: Mapping[str, Any]) -> pd.DataFrame:
    """The runs of ``frame`` with these column values (None matches a missing value), as ``RunStore``'s
    ``matching`` selects them; all of ``frame`` for no filter."""
    keep = np.ones(len(frame), dtype=bool)
    for column, value in matching.items():
        keep &= (frame[column].isna() if value is None else frame[column] == value).to_numpy()
    return frame if keep.all() else frame[keep]
