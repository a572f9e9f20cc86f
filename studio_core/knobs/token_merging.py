"""Token merging for Stable Diffusion (ToMe for SD): self-attention runs on fewer tokens.

Bolya & Hoffman, "Token Merging for Fast Stable Diffusion" (CVPR Workshops 2023), after Bolya et al.,
"Token Merging: Your ViT But Faster" (ICLR 2023). Neighbouring latent pixels carry nearly the same
features, so before each self-attention of the UNet's transformer blocks the most redundant tokens are
averaged into similar ones, attention runs on the N - r tokens left, and afterwards every merged token
takes the output of the token it was merged into. The paper reports generation up to 2x faster and up
to 5.6x less memory for Stable Diffusion at high resolutions with little change in FID; at low resolution
attention is a smaller share of the work and so is the gain.

Bipartite soft matching on the token grid: the grid is cut into 2x2 cells; one token of each cell is a
*destination* (a random one, or the top-left), the other three are *sources*. Each source finds its most
similar destination (cosine similarity); the r = int(N * ratio) sources with the highest similarity are
averaged into their destination (each sample of the batch, so each classifier-free-guidance half, is
matched on its own features). Tokens outside whole cells (an odd last row or column) are never merged.
Unmerging copies each destination's output back to the sources merged into it.

Settings:

* ``ratio``: fraction of each call's tokens merged away (at most 0.75: three of every four are sources).
* ``max_downsample``: merge only in blocks whose token grid is downsampled at most this much from the
  latent (1: the full-resolution blocks, where attention costs most; 8: every block).
* ``random_dst``: a random destination per cell (the paper's default; the draw is seeded from the
  denoising-step index, so repeats with the same seed are identical; one draw per call, shared by the
  whole batch, so both guidance halves of an image use the same cells), or always the top-left token.

Mechanism, in the style of diffusers' hooks (``diffusers.hooks.HookRegistry``, see ``_hooks.py``): a hook
on the UNet records the latent's height and width at each call; a hook on the ``attn1`` (self-attention)
of every ``BasicTransformerBlock`` inside a ``Transformer2DModel`` merges its input and unmerges its
output. The block's own norms, gates and positional embeddings run untouched around it. The similarity
is measured on attn1's input (the block's normalised hidden states). Removing the hooks restores the
original forward exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from studio_core.knobs import register
from studio_core.knobs._hooks import (
    ForwardHook,
    StepTracker,
    denoiser_config,
    denoiser_of,
    install,
    step_callback_reason,
)
from studio_core.knobs._validate import check_bool, check_choice, check_number
from studio_core.knobs.base import Applied, Knob, KnobReport

if TYPE_CHECKING:
    import torch

__all__ = ["Matching", "TokenMergingKnob", "TokenMergingSettings", "bipartite_soft_matching", "cell_partition",
           "self_attentions", "token_grid"]

HOOK_NAME = "studio_token_merging"
MAX_RATIO = 0.75  # with 2x2 cells three of every four tokens are sources
_SEED = 20230330  # random destinations: generator seeded with _SEED + step index
# what diffusers' UNet2DConditionModel uses when its config leaves the block types out
_DEFAULT_BLOCKS = ("CrossAttnDownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D")


@dataclass(frozen=True)
class TokenMergingSettings:
    ratio: float = 0.5
    max_downsample: Literal[1, 2, 4, 8] = 1
    random_dst: bool = True


# ------------------------------------------------------------------------------------------ matching
def token_grid(height: int, width: int, n: int, max_factor: int = 64) -> tuple[int, int, int] | None:
    """(downsample, rows, cols) of a sequence of ``n`` tokens from a ``height`` x ``width`` latent, or None.

    A stride-2 convolution maps a side s to ceil(s / 2), so the grid at downsample d is ceil(h/d) x ceil(w/d)."""
    d = 1
    while d <= max_factor:
        rows, cols = -(-height // d), -(-width // d)
        if rows * cols == n:
            return d, rows, cols
        d *= 2
    return None


def cell_partition(rows: int, cols: int, offsets: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(destinations, sources, rest): token indices of a row-major ``rows`` x ``cols`` grid.

    One destination per whole 2x2 cell, at ``offsets`` (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right; None: all top-left); the cell's other three tokens are sources. ``rest`` are the
    tokens of an odd last row or column, outside every cell."""
    import torch

    hc, wc = rows // 2, cols // 2
    cells = hc * wc
    corner = (2 * torch.arange(hc)[:, None] * cols + 2 * torch.arange(wc)[None, :]).reshape(-1)
    members = corner[:, None] + torch.tensor([0, 1, cols, cols + 1])  # (cells, 4)
    if offsets is None:
        offsets = torch.zeros(cells, dtype=torch.long)
    dst = members.gather(1, offsets[:, None]).squeeze(1)
    is_src = torch.ones(cells, 4, dtype=torch.bool)
    is_src[torch.arange(cells), offsets] = False
    src = members[is_src]
    inside = torch.zeros(rows, cols, dtype=torch.bool)
    inside[:2 * hc, :2 * wc] = True
    rest = (~inside).reshape(-1).nonzero().squeeze(1)
    return dst, src, rest


@dataclass
class Matching:
    """One bipartite soft matching of a (batch, N, C) token sequence; ``merge`` leaves N - r tokens.

    Index tensors (token positions in the original sequence): ``dst`` (D,) destinations, ``rest`` (L,)
    tokens outside the cells, ``kept`` (B, S - r) sources left alone, ``merged`` (B, r) sources merged,
    ``into`` (B, r) which destination (0..D-1) each merged source joins, ``count`` (B, D) how many tokens
    each destination averages (itself included). Merged order: kept sources, destinations, rest."""

    n: int
    r: int
    dst: torch.Tensor
    rest: torch.Tensor
    kept: torch.Tensor
    merged: torch.Tensor
    into: torch.Tensor
    count: torch.Tensor

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.r == 0:
            return x
        c = x.shape[-1]
        kept = x.gather(1, _expand(self.kept, c))
        dst = x[:, self.dst]
        moved = x.gather(1, _expand(self.merged, c))
        if x.device.type == "cuda":  # index_put_ with accumulate sorts its indices: deterministic on CUDA
            b = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(self.into)
            dst = dst.index_put((b, self.into), moved, accumulate=True)
        else:  # scatter_add_ on CPU writes each output from one thread, in order: deterministic
            dst = dst.scatter_add(1, _expand(self.into, c), moved)
        dst = dst / self.count.unsqueeze(-1).to(dst.dtype)
        return torch.cat([kept, dst, x[:, self.rest]], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        if self.r == 0:
            return y
        b, _, c = y.shape
        kept, dst, rest = y.split([self.kept.shape[1], self.dst.numel(), self.rest.numel()], dim=1)
        out = y.new_empty(b, self.n, c)
        out[:, self.dst] = dst
        out[:, self.rest] = rest
        out.scatter_(1, _expand(self.kept, c), kept)
        out.scatter_(1, _expand(self.merged, c), dst.gather(1, _expand(self.into, c)))  # copy back
        return out


def _expand(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(-1, -1, channels)


def bipartite_soft_matching(x: torch.Tensor, rows: int, cols: int, r: int,
                            offsets: torch.Tensor | None = None) -> Matching:
    """Match the tokens of ``x`` (batch, rows * cols, C): the ``r`` sources most similar to a destination
    (cosine similarity of ``x``) merge into it, per sample. ``r`` is capped at the number of sources."""
    import torch

    b, n, _ = x.shape
    if n != rows * cols:
        raise ValueError(f"{n} tokens do not form a {rows}x{cols} grid")
    dst, src, rest = (t.to(x.device) for t in cell_partition(rows, cols, offsets))
    r = max(0, min(int(r), src.numel()))
    with torch.no_grad():
        metric = torch.nn.functional.normalize(x.float(), dim=-1)
        scores = metric[:, src] @ metric[:, dst].transpose(1, 2)  # (B, S, D)
        best, best_dst = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True, stable=True)  # most similar sources first
        merged_pos, kept_pos = order[:, :r], order[:, r:]
        into = best_dst.gather(1, merged_pos)
        count = torch.ones(b, dst.numel(), dtype=torch.long, device=x.device).scatter_add(
            1, into, torch.ones_like(into))
    return Matching(n, r, dst, rest, src[kept_pos], src[merged_pos], into, count)


# ------------------------------------------------------------------------------------------ hooks
def self_attentions(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The ``attn1`` of every BasicTransformerBlock of the UNet's Transformer2DModels (spatial tokens only;
    temporal transformers of video UNets attend over frames, not over a grid)."""
    from diffusers import Transformer2DModel
    from diffusers.models.attention import BasicTransformerBlock

    found: dict[str, torch.nn.Module] = {}
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            for i, block in enumerate(getattr(module, "transformer_blocks", None) or ()):
                if isinstance(block, BasicTransformerBlock) and getattr(block, "attn1", None) is not None:
                    found[f"{name}.transformer_blocks.{i}.attn1"] = block.attn1
    return found


@dataclass
class _StepCount:
    tokens_merged: int = 0  # sum over this step's calls of the tokens merged away per sample
    calls_merged: int = 0
    calls_left_alone: int = 0  # grid downsampled more than max_downsample allows
    calls_too_few: int = 0  # r = int(N * ratio) is 0
    calls_other: int = 0  # no latent size known, tokens not on a grid, or an attention mask


class _State:
    def __init__(self, tracker: StepTracker, settings: TokenMergingSettings):
        self.tracker, self.settings = tracker, settings
        self.size: tuple[int, int] | None = None  # latent height, width of the running UNet call
        self.generator: torch.Generator | None = None
        self.generation = 0
        self.steps: dict[int, _StepCount] = {}  # current pipeline call
        self.last_steps: dict[int, _StepCount] = {}  # the previous one
        self.levels: dict[tuple[int, int, int], dict] = {}  # (downsample, rows, cols) -> tokens, merged, calls
        self.last_levels: dict[tuple[int, int, int], dict] = {}
        self.finest_alone: tuple[int, int, int] | None = None

    def count(self) -> _StepCount:
        return self.steps.setdefault(self.tracker.step, _StepCount())

    def plan(self, n: int, masked: bool) -> tuple[int, int, int] | None:
        """(rows, cols, r) when this attention call merges tokens, else None; counts the call either way."""
        c = self.count()
        grid = token_grid(*self.size, n) if self.size is not None and not masked else None
        if grid is None:
            c.calls_other += 1
            return None
        d, rows, cols = grid
        if d > self.settings.max_downsample:
            c.calls_left_alone += 1
            self.finest_alone = grid if self.finest_alone is None else min(self.finest_alone, grid)
            return None
        r = min(int(n * self.settings.ratio), 3 * (rows // 2) * (cols // 2))
        level = self.levels.setdefault(grid, {"tokens": n, "merged": r, "calls": 0, "too_few": 0})
        if r <= 0:
            c.calls_too_few += 1
            level["too_few"] += 1
            return None
        c.calls_merged += 1
        c.tokens_merged += r
        level["calls"] += 1
        return rows, cols, r

    def offsets(self, rows: int, cols: int) -> torch.Tensor | None:
        import torch

        if not self.settings.random_dst:
            return None
        if self.generator is None:  # one draw sequence per UNet call, seeded by the step: repeatable
            self.generator = torch.Generator().manual_seed(_SEED + self.tracker.step)
        return torch.randint(4, ((rows // 2) * (cols // 2),), generator=self.generator)


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


class _UNetHook(ForwardHook):
    """Records the latent size of each UNet call and starts a new count per pipeline call."""

    def __init__(self, state: _State):
        self.state = state

    def forward(self, module, original, *args, **kwargs):
        st = self.state
        if st.tracker.generations != st.generation:  # a new pipeline call: keep the last one's counts
            st.generation = st.tracker.generations
            st.last_steps, st.steps = st.steps, {}
            st.last_levels, st.levels = st.levels, {}
        sample = args[0] if args else kwargs.get("sample")
        st.size = (int(sample.shape[-2]), int(sample.shape[-1])) if _is_tensor(sample) else None
        st.generator = None
        try:
            return original(*args, **kwargs)
        finally:
            st.size, st.generator = None, None


class _MergeHook(ForwardHook):
    """Merges the tokens entering one self-attention and unmerges its output."""

    def __init__(self, state: _State):
        self.state = state

    def forward(self, module, original, *args, **kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if not _is_tensor(x) or x.ndim != 3:
            return original(*args, **kwargs)
        plan = self.state.plan(x.shape[1], kwargs.get("attention_mask") is not None)
        if plan is None:
            return original(*args, **kwargs)
        rows, cols, r = plan
        m = bipartite_soft_matching(x, rows, cols, r, self.state.offsets(rows, cols))
        if args:
            args = (m.merge(x), *args[1:])
        else:
            kwargs = {**kwargs, "hidden_states": m.merge(x)}
        return m.unmerge(original(*args, **kwargs))


# ------------------------------------------------------------------------------------------ knob
@register
class TokenMergingKnob(Knob):
    name = "token_merging"
    title = "Token merging (ToMe)"
    description = ("Merge the most similar tokens before each self-attention of the UNet and unmerge after, "
                   "so attention runs on fewer tokens (Bolya & Hoffman, CVPR-W 2023).")
    Settings = TokenMergingSettings
    order = 62
    group = "caching & tokens"

    def validate(self, settings: TokenMergingSettings) -> None:
        f = self.field_name
        check_number(f"{f}.ratio", settings.ratio, 0, MAX_RATIO, "a fraction of the tokens greater than 0 and at "
                     "most 0.75 (with 2x2 cells at most 3 of every 4 tokens are sources)", above_lo=True)
        check_choice(f"{f}.max_downsample", settings.max_downsample, (1, 2, 4, 8), "1, 2, 4 or 8")
        check_bool(f"{f}.random_dst", settings.random_dst)

    def label(self, settings) -> str:
        extra = [] if settings.max_downsample == 1 else [f"down to 1/{settings.max_downsample}"]
        if not settings.random_dst:
            extra.append("fixed dst")
        return f"ToMe {settings.ratio:.0%}" + (" " + ", ".join(extra) if extra else "")

    def check_model(self, info, settings) -> str | None:
        cfg = denoiser_config(info)
        cls = cfg.get("_class_name") or info.denoiser
        if info.denoiser != "unet":
            return f"ToMe for SD merges tokens in the UNet's transformer blocks; this model's denoiser is {cls}"
        blocks = [*cfg.get("down_block_types", _DEFAULT_BLOCKS[:1]), *cfg.get("up_block_types", _DEFAULT_BLOCKS[2:]),
                  cfg.get("mid_block_type", _DEFAULT_BLOCKS[1]) or ""]
        if not any("CrossAttn" in (b or "") for b in blocks):
            return f"this UNet ({cls}) has no transformer blocks, so there is no self-attention to merge tokens in"
        return None

    def supports(self, pipe, settings) -> str | None:
        unet = getattr(pipe, "unet", None)
        if unet is None:
            return ("ToMe for SD merges tokens in the UNet's transformer blocks; this pipeline's denoiser is "
                    f"{type(denoiser_of(pipe)).__name__}")
        if not self_attentions(unet):
            return (f"this UNet ({type(unet).__name__}) has no transformer blocks, so there is no self-attention "
                    "to merge tokens in")
        return step_callback_reason(pipe)

    def apply(self, pipe, settings: TokenMergingSettings) -> Applied:
        unet = pipe.unet
        tracker = StepTracker()
        state = _State(tracker, settings)
        attns = self_attentions(unet)
        # one install: the UNet's size hook and every self-attention's, removed together
        remove_hooks = install({"unet": unet, **attns}, HOOK_NAME,
                               lambda key, m: _UNetHook(state) if m is unet else _MergeHook(state))

        def undo() -> None:
            remove_hooks()

        def report() -> KnobReport:
            return self._report(settings, state, len(attns))

        return Applied(self.name, {"callback_on_step_end": tracker.callback}, undo=undo, report=report)

    def _report(self, settings: TokenMergingSettings, state: _State, n_attn: int) -> KnobReport:
        steps, levels = (state.steps, state.levels) if state.steps else (state.last_steps, state.last_levels)
        counts = [steps[k] for k in sorted(steps)]
        n_steps = len(counts)
        merged_calls = sum(c.calls_merged for c in counts)
        alone = sum(c.calls_left_alone for c in counts)
        md = settings.max_downsample
        details = {
            "ratio": settings.ratio, "max_downsample": md, "random_dst": settings.random_dst,
            "self_attention_blocks": n_attn, "steps": n_steps, "calls_merged": merged_calls,
            "tokens_merged": sum(c.tokens_merged for c in counts),
            "levels": [{"grid": f"{rows}x{cols}", "downsample": d, **v}
                       for (d, rows, cols), v in sorted(levels.items())],
            "tokens_merged_per_step": [c.tokens_merged for c in counts],
            "calls_merged_per_step": [c.calls_merged for c in counts],
            "calls_left_alone_per_step": [c.calls_left_alone for c in counts],  # coarser than max_downsample
            "calls_too_few_tokens_per_step": [c.calls_too_few for c in counts],
            "calls_other_per_step": [c.calls_other for c in counts],
            "pipeline_calls": state.tracker.generations,
        }
        def per(k: int, what: str) -> str:  # "3 self-attention calls" per step
            k = k / n_steps if n_steps else k
            return f"{k:g} {what}" + ("" if k == 1 else "s")

        if merged_calls:
            parts = [f"merged {v['merged']} of {v['tokens']} tokens ({v['merged'] / v['tokens']:.0%}) in "
                     f"{per(v['calls'], 'self-attention call')} per step at the {rows}x{cols} level"
                     for (d, rows, cols), v in sorted(levels.items()) if v["calls"]]
            summary = "; ".join(parts) + f"; {merged_calls} calls in {n_steps} steps"
            if alone:
                summary += f" ({per(alone, 'call')} per step at coarser levels left alone: max_downsample={md})"
            return KnobReport(self.name, True, summary, details)
        # nothing merged: say why
        too_few = [(g, v) for g, v in sorted(levels.items()) if v["too_few"]]
        if not counts:
            why = "the UNet never ran with token merging installed"
        elif too_few:
            (_, rows, cols), v = too_few[0]
            why = (f"ratio {settings.ratio} of {v['tokens']} tokens at the {rows}x{cols} level rounds down to r=0 "
                   f"(merging one token needs ratio >= {1 / v['tokens']:.3g})")
        elif alone and state.finest_alone is not None:
            d, rows, cols = state.finest_alone
            why = (f"every self-attention runs on a grid downsampled more than max_downsample={md} allows "
                   f"(the finest is {rows}x{cols}, downsampled {d}x)")
        else:
            why = "no self-attention call ran on a token grid of the latent (or every call had an attention mask)"
        return KnobReport(self.name, False, f"nothing merged: {why}", details)
