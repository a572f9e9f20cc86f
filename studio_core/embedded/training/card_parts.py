"""Pieces both model cards (emoji-sd's ``model_card.py``, emoji-flux's ``flux_card.py``) are written with."""

from __future__ import annotations

__all__ = ["chain", "kind_rows", "pct", "verdict"]


def pct(x: float) -> str:
    return f"{x:.1%}"


def verdict(value: float, target: float, most: bool = False) -> str:
    """"met" when ``value`` reaches ``target`` (at most it, with ``most``), else "NOT met"."""
    return "met" if (value <= target if most else value >= target) else "NOT met"


def chain(report: dict) -> list[dict]:
    """The reports of the runs this one continued, earliest first."""
    out, prev = [], report.get("continued_from")
    while prev:
        out.insert(0, prev)
        prev = prev.get("continued_from")
    return out


def kind_rows(by_kind: dict) -> str:
    """Markdown rows of prompt fidelity by caption kind."""
    return "\n".join(f"| {k} | {v['n']} | {v['top1']:.1%} | {v['top5']:.1%} |" for k, v in by_kind.items())
