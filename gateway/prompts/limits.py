"""What one prompt render may spend (kept apart from the renderer so that reading the limits,
on the request path and in settings, does not import Jinja2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """CPU time, loop steps, output and value sizes for one render of a version's messages."""

    timeout_s: float = 0.1
    max_output_chars: int = 1_000_000
    max_loop_steps: int = 1_000_000
    max_int_bits: int = 4096


#: How much CPU a render may spend on the event loop before it is moved to a worker thread.
INLINE_RENDER_S = 0.002
