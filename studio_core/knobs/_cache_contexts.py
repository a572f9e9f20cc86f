"""Which guidance branch a transformer call belongs to, for the transformer cache knob and MagCache's calibration.

A pipeline that runs classifier-free guidance as two denoiser calls per step (FluxPipeline's true CFG, for
emoji-flux) names them ``transformer.cache_context("cond")`` and ``("uncond")``. diffusers hands that name to
every *stateful* hook with a ``StateManager`` (``hooks._set_cache_context``), and First Block Cache, TaylorSeer
and MagCache key their state on it, so each branch is cached against itself. Pyramid Attention Broadcast and
FasterCache keep one plain ``state`` per hook instead: with two calls per step, the unconditional call would
reuse the attention output the conditional call just computed, so guidance would be pushed towards nothing.

``watch_contexts`` registers a stateful hook of our own on the transformer: it receives the same name and
reports it before each call. ``per_context_states`` builds on it to give such single-state hooks one state per
branch, which is what those methods do on a batched CFG call (each half reuses its own cached output).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["DEFAULT_CONTEXT", "per_context_states", "watch_contexts"]

DEFAULT_CONTEXT = "inference"  # diffusers' own name for a call outside any cache_context
WATCH_HOOK = "studio_cache_context_watch"


def watch_contexts(transformer, on_call: Callable[[str], None], on_reset: Callable[[], None] = lambda: None,
                   name: str = WATCH_HOOK) -> Callable[[], None]:
    """Call ``on_call(context name)`` before every forward of ``transformer`` and ``on_reset()`` when diffusers
    resets the stateful hooks (at the end of each pipeline call); returns the function that removes the hook.
    Registered last, so it runs before the hooks already on the transformer."""
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.hooks.hooks import BaseState, StateManager

    class _Nothing(BaseState):
        def reset(self) -> None:
            pass

    class _Watch(ModelHook):
        _is_stateful = True  # so that _set_cache_context reaches its StateManager

        def __init__(self) -> None:
            super().__init__()
            self.contexts = StateManager(_Nothing)

        def new_forward(self, module, *args, **kwargs):
            context = self.contexts._context
            on_call(DEFAULT_CONTEXT if context is None else context.name)
            return self.fn_ref.original_forward(*args, **kwargs)

        def reset_state(self, module):
            on_reset()
            return module

    had_registry, had_forward = hasattr(transformer, "_diffusers_hook"), "forward" in transformer.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_Watch(), name)

    def remove() -> None:
        registry.remove_hook(name, recurse=False)
        if not registry.hooks:  # leave the module as it was: no empty registry, no forward bound on the instance
            if not had_forward:
                transformer.__dict__.pop("forward", None)
            if not had_registry:
                del transformer._diffusers_hook

    return remove


def per_context_states(transformer, hooks: list) -> Callable[[], None]:
    """Give each of ``hooks`` (diffusers hooks that keep one ``state`` attribute) a separate state per cache
    context, created fresh the first time a context is seen in a pipeline call; returns the undo."""
    states: dict[str, list] = {}

    def switch(context: str) -> None:
        if context not in states:
            states[context] = [type(h.state)() for h in hooks]
        for hook, state in zip(hooks, states[context]):
            hook.state = state

    return watch_contexts(transformer, switch, states.clear)
