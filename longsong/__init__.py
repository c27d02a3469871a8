"""longsong: full-length AI songs from a text prompt, made durable by Temporal.

    from longsong import LongsongClient, SongRequest, Section

Rooms: `request`/`plan` (what to make), `engines/` (windows of audio), `audio/` (whole-track DSP and
files), `storage/` (object stores), `workflows/` + `activities/` + `worker` + `client` (the Temporal
layer), `cli`/`devstack` (the command line and local stack), `settings` (every LONGSONG_* variable).
This module stays import-light: the workflow sandbox imports `longsong.request` and `longsong.plan`,
so the client is loaded only when asked for.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["LongsongClient", "Section", "SongFailed", "SongRequest", "__version__"]

if TYPE_CHECKING:
    from longsong.client import LongsongClient, SongFailed
    from longsong.request import Section, SongRequest


def __getattr__(name: str):
    if name in ("LongsongClient", "SongFailed"):
        from longsong import client

        return getattr(client, name)
    if name in ("Section", "SongRequest"):
        from longsong import request

        return getattr(request, name)
    raise AttributeError(f"module 'longsong' has no attribute {name!r}")
