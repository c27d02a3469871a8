"""Songs made from other songs: `extend` continues a finished song, `regenerate` redoes it from a window on.

A finished song keeps every window's audio, hand-off state, record and gate report under its track folder
(`windows/`, listed in metadata.json). A derived song reuses the first windows as they are and continues
from the last kept window's hand-off, so none of them is generated again. Pure functions over a parent's
manifest (the client checks a request before anything starts) and one reader the workflow's activity uses.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

from longsong.request import InvalidRequest, Section, SongRequest
from longsong.storage import COMMIT_MARKER, Storage
from longsong.workflows.messages import ParentWindows, SegmentRecord, WindowQuality, track_prefix


class ParentError(InvalidRequest):
    """The parent song cannot be extended or redone as asked (missing, not finished, no hand-off states)."""


def read_manifest(storage: Storage, user_id: str, parent_id: str) -> dict:
    """The parent's committed metadata.json under this user's track folder."""
    key = track_prefix(user_id, parent_id) + COMMIT_MARKER
    try:
        manifest = json.loads(storage.get_bytes(key))
    except FileNotFoundError:
        raise ParentError("parent_id", f"no finished song {parent_id} of user {user_id} in {storage.url}") from None
    if not manifest.get("windows"):
        raise ParentError("parent_id", f"song {parent_id} was made before songs kept their windows' hand-off "
                                       f"states; it cannot be extended or redone (generate it anew)")
    return manifest


def window_ends(manifest: dict) -> list[float]:
    """Track time (s) where each of the parent's windows ends: the points a song can continue from."""
    return [w["end_s"] for w in manifest["windows"]]


def keep_for_extend(manifest: dict, from_s: float | None) -> int:
    """Windows kept when extending from `from_s` (None: the end): every window ending at or before it."""
    ends = window_ends(manifest)
    if from_s is None:
        return len(ends)
    duration = manifest["duration_s"]
    if isinstance(from_s, bool) or not isinstance(from_s, (int, float)) or not 0 <= from_s <= duration:
        raise ParentError("from_s", f"must be a time within the song, 0-{duration:g} s, got {from_s!r}")
    keep = sum(1 for end in ends if end <= from_s + 1e-9)
    if keep == 0:
        raise ParentError("from_s", f"{from_s:g} s is inside the first window (it ends at {ends[0]:g} s); "
                                    f"continue from {ends[0]:g} s or later")
    return keep


def keep_for_regenerate(manifest: dict, from_window: int) -> int:
    """Windows kept when redoing from window `from_window` (0-based: 1 keeps window 0)."""
    n = len(manifest["windows"])
    if isinstance(from_window, bool) or not isinstance(from_window, int) or not 1 <= from_window < n:
        raise ParentError("from_window", f"must be 1-{n - 1} (the song has {n} windows, 0-{n - 1}; windows from "
                                         f"this one on are generated anew), got {from_window!r}")
    return from_window


def _sections(value: object) -> list[Section]:
    return [s if isinstance(s, Section) else Section(**s) for s in value or []]


def derive(operation: str, manifest: dict, *, user_id: str, duration_s: float | None = None,
           from_s: float | None = None, from_window: int | None = None, sections: list[Section] | None = None,
           seed: int | None = None, outro: bool | None = None, request_id: str | None = None,
           max_rerolls: int | None = None) -> SongRequest:
    """The request of a song derived from the parent `manifest`: same style, engine, model and windowing.

    extend: `duration_s` more seconds after the continuation point (the parent's end, or the last window
    end at or before `from_s`); `sections` start at 0 = that point; `outro` puts an ending on the last
    window. regenerate: the same duration, windows `from_window`.. anew with `seed` (default: a new one)
    and `sections` (absolute times; default: the parent's)."""
    parent = manifest["request"]
    base = replace(SongRequest(**{**parent, "sections": _sections(parent["sections"])}),
                   request_id=request_id or uuid.uuid4().hex, user_id=user_id, parent_id=parent["request_id"])
    if max_rerolls is not None:
        base = replace(base, max_rerolls=max_rerolls)
    if operation == "extend":
        keep = keep_for_extend(manifest, from_s)
        point = window_ends(manifest)[keep - 1]
        if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or duration_s <= 0:
            raise ParentError("duration_s", f"must be the seconds to add after {point:g} s (> 0), got {duration_s!r}")
        earlier = [s for s in base.sections if s.start_s < point]
        later = [Section(s.start_s + point, s.prompt) for s in _sections(sections)]
        if later and not earlier:  # sections start at 0; this one names the kept part (never generated again)
            earlier = [Section(0.0, f"kept from song {parent['request_id']}")]
        return replace(base, duration_s=round(point + duration_s, 6), sections=earlier + later,
                       seed=manifest["seed"] if seed is None else seed, outro=bool(outro), keep_windows=keep)
    if operation == "regenerate":
        if from_window is None:
            raise ParentError("from_window", "regenerate needs from_window (the first window made anew)")
        keep = keep_for_regenerate(manifest, from_window)
        return replace(base, sections=base.sections if sections is None else _sections(sections), seed=seed,
                       keep_windows=keep)
    raise ValueError(f"operation: must be extend or regenerate, got {operation!r}")


def load_parent(storage: Storage, user_id: str, parent_id: str, keep: int) -> ParentWindows:
    """The first `keep` windows of the parent, as its track folder keeps them (the workflow's activity)."""
    manifest = read_manifest(storage, user_id, parent_id)
    windows = manifest["windows"]
    if not 1 <= keep <= len(windows):
        raise ParentError("keep_windows", f"must be 1-{len(windows)} (song {parent_id} has {len(windows)} "
                                          f"windows), got {keep}")
    records = [SegmentRecord.from_json(storage.get_bytes(w["record"])) for w in windows[:keep]]
    quality = [WindowQuality(**{**w["gate"]["summary"], "inherited": True}) if w.get("gate") else
               WindowQuality(w["index"], 0, 0, True, 1.0, [], inherited=True) for w in windows[:keep]]
    first = records[0].outcome
    return ParentWindows(
        segments=[r.segment for r in records], records=[w["record"] for w in windows[:keep]],
        states=[w["state"] for w in windows[:keep]], features=[w.get("features") or "" for w in windows[:keep]],
        reports=[w.get("quality") or "" for w in windows[:keep]], quality=quality, model=first.model,
        model_version=first.model_version)

