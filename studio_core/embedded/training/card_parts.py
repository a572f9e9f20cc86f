"""Pieces both model cards (emoji-sd's ``model_card.py``, emoji-flux's ``flux_card.py``) are written with."""

from __future__ import annotations

__all__ = ["chain", "kind_rows", "measured_head", "pct", "verdict"]


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


def measured_head(command: str, report: dict, ev: dict | None) -> list[str]:
    """The start of a card's "Measured after training" section: who measured what on which weights, and the
    training-time prompt fidelity against the project's targets; a "not measured yet" line without ``ev``."""
    if ev is None:
        return [f"## Measured after training\nNot measured on these weights yet: run {command} (speed, and prompt "
                "fidelity at other guidance scales; it writes `evaluation.json` and rewrites this card)."]
    f, t, env = report["fidelity"], ev["targets"], ev["setup"]
    return [f"## Measured after training\nBy {command} on these weights (sha256 `{ev['weights']}`), "
            f"{ev['utc'][:10]}: {env['device_name']} with {env['machine']}, {env['threads']} torch threads, torch "
            f"{env['torch_version']}, diffusers {env['diffusers_version']}, git {env['git_commit']}.",
            f"- Against the project's targets ({f['train']['n']} training captions, {f['steps']} "
            f"{f['sampler']} steps, guidance {f['guidance']}; from training): top-1 **{pct(f['train']['top1'])}** "
            f"(target at least {pct(t['train_top1'])}: {verdict(f['train']['top1'], t['train_top1'])}), top-5 "
            f"**{pct(f['train']['top5'])}** (target at least {pct(t['train_top5'])}: "
            f"{verdict(f['train']['top5'], t['train_top5'])}). Held-out captions: top-1 "
            f"{pct(f['held_out']['top1'])}, top-5 {pct(f['held_out']['top5'])}."]
