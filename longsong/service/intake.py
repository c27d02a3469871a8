"""Request bodies into SongRequests, every problem a one-line message naming its field.

The body is parsed here, not by pydantic, so the messages are the CLI's (`longsong.request.validate`):
malformed JSON is a 400, a body over 64 KB a 413, unknown fields and bad values a 422 with one message per
field. Nothing is started before a body passes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields

from longsong.request import ID_PATTERN, SongRequest, problems
from longsong.service.schemas import ExtendIn, RegenerateIn, SongIn

MAX_BODY = 64 * 1024
SERVER_FIELDS = ("user_id", "parent_id", "keep_windows")  # set by the key and the extend/regenerate routes


class BodyError(Exception):
    """A body that cannot become a request; `status` is the HTTP answer, `errors` (field, message) pairs."""

    def __init__(self, status: int, errors: list[tuple[str | None, str]]):
        self.status = status
        self.errors = errors
        super().__init__(errors[0][1] if len(errors) == 1 else f"{len(errors)} problems: "
                         + "; ".join(m for _, m in errors))


def parse_json(body: bytes) -> dict:
    if len(body) > MAX_BODY:
        raise BodyError(413, [(None, f"body is {len(body)} bytes; at most {MAX_BODY} (64 KB)")])
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BodyError(400, [(None, f"body is not valid JSON: {str(e).splitlines()[0]}")]) from None
    if not isinstance(data, dict):
        raise BodyError(422, [(None, f"body must be a JSON object, got {type(data).__name__}")])
    return data


def _unknown(data: dict, model: type) -> None:
    allowed = list(model.model_fields)
    unknown = [name for name in data if name not in allowed]
    if unknown:
        raise BodyError(422, [(name, f"{name}: unknown field; allowed: {', '.join(allowed)}") for name in unknown])


def idempotent_id(user_id: str, key: str) -> str:
    """An Idempotency-Key as a song id, scoped to its user (two users' keys never collide)."""
    if not key or len(key) > 255 or not key.isprintable():
        raise BodyError(422, [("Idempotency-Key", "Idempotency-Key: must be 1-255 printable characters")])
    return hashlib.sha256(f"{user_id}\0{key}".encode()).hexdigest()[:32]


def song_request(body: bytes, user_id: str, idempotency_key: str | None) -> SongRequest:
    data = parse_json(body)
    _unknown(data, SongIn)
    if idempotency_key is not None:
        if data.get("request_id") is not None:
            raise BodyError(422, [("request_id", "request_id: give request_id or an Idempotency-Key header, "
                                                 "not both")])
        data["request_id"] = idempotent_id(user_id, idempotency_key)
    if data.get("request_id") is None:
        data.pop("request_id", None)  # a fresh id
    req = SongRequest(**{"prompt": data.pop("prompt", None), **data, "user_id": user_id})
    found = problems(req)
    if found:
        raise BodyError(422, [(e.field, str(e)) for e in found])
    return req


def derive_options(body: bytes, operation: str) -> dict:
    """The extend/regenerate body as keyword options for LongsongClient.derive (which checks the values)."""
    data = parse_json(body)
    model = ExtendIn if operation == "extend" else RegenerateIn
    _unknown(data, model)
    required = "duration_s" if operation == "extend" else "from_window"
    if required not in data:
        raise BodyError(422, [(required, f"{required}: required")])
    if data.get("request_id") is not None and not (isinstance(data["request_id"], str)
                                                   and ID_PATTERN.fullmatch(data["request_id"])):
        raise BodyError(422, [("request_id", f"request_id: must match [A-Za-z0-9_-]{{1,64}}, "
                                             f"got {data['request_id']!r}")])
    return {k: v for k, v in data.items() if v is not None}


def field_names() -> set[str]:
    """SongIn's fields must be the request's, less the ones the server sets (a test holds them equal)."""
    return {f.name for f in fields(SongRequest)} - set(SERVER_FIELDS)
