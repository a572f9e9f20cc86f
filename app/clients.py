"""Whether the client of the request a handler serves is still there, so work follows its client.

Gradio runs a handler in a worker thread and keeps running it when the client goes: a closed page
(its event stream drops) only marks the event not ``alive``; a cancelled request (gradio_client's
``job.cancel()``, the page's ``cancels=``) only cancels the asyncio task awaiting the thread, and the
event leaves the queue's active jobs. ``client_watch()``, called in the handler's thread, gives a
function that reads both and says why the client is gone, or None while it is there; the service
checks it while the request waits for the device and after every denoiser step.

It reads gradio's queue (``LocalContext`` and ``Blocks._queue.active_jobs``), which is not a public API:
``tests/test_cancel.py`` pins the behaviour on the installed gradio, with a real client that goes away.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["GONE", "client_watch"]

GONE = "the client went away (page closed or request abandoned)"


def client_watch() -> Callable[[], str | None]:
    """For the request being handled in this thread: a function giving ``GONE`` once its client has
    gone, else None. Outside a queued gradio request (a direct call, a test) it never says gone."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or not event_id:
        return lambda: None

    def gone() -> str | None:
        for job in list(queue.active_jobs):
            for event in list(job or ()):
                if event._id == event_id:
                    return None if event.alive else GONE
        return GONE  # no longer an active job: cancelled, or the queue dropped it

    return gone
