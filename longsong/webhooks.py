"""Webhooks: the callback URL policy (an SSRF guard), per-key signing and one delivery attempt.

Pure (no Temporal): the API checks a `callback_url` at submission, the song workflow checks its syntax
(no DNS inside deterministic code) and the `send_webhook` activity delivers, re-checking the policy
because DNS may have changed since. By default only `https` URLs whose host resolves to public
addresses only are allowed; LONGSONG_WEBHOOK_ALLOW_PRIVATE=1 (development) lifts both rules.

Signature: header `Longsong-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`,
the secret being `key_secret(LONGSONG_WEBHOOK_SECRET, key id)`: derived, so no secret is stored in the
database or workflow history. Receivers check it with `verify` (or the same few lines in their language).
Import-light (httpx is imported by `deliver`). The URL's shape is `longsong.request.check_callback_syntax`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from urllib.parse import urlsplit

from longsong import __version__
from longsong.request import CALLBACK_RULE as ALLOWED
from longsong.request import InvalidRequest, check_callback_syntax

FIELD = "callback_url"
SIGNATURE_HEADER = "Longsong-Signature"
EVENT_ID_HEADER = "Longsong-Event-Id"
USER_AGENT = f"longsong-webhooks/{__version__}"
PRIVATE_HINT = "LONGSONG_WEBHOOK_ALLOW_PRIVATE=1 allows others, for development"
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRejected(Exception):
    """Permanent: the policy refuses the URL, or the receiver answered a 3xx or a 4xx other than 408/429."""


class WebhookUnreachable(Exception):
    """Transient: connection error, timeout, 5xx, 408 or 429; worth another attempt later."""


# ---------------------------------------------------------------------------------------------- URL policy


def _not_public(ip: Address) -> str | None:
    """Why `ip` is not a public address (None: it is). IPv4 inside IPv6 (mapped, 6to4) is judged as IPv4."""
    embedded = isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.sixtofour)
    if embedded and _not_public(embedded):
        return f"{_not_public(embedded)} (IPv4 {embedded} inside IPv6)"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared (CGNAT)"
    return None if ip.is_global else "non-global"  # a safety net: the checks above cover today's is_global


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _addresses(host: str, port: int) -> list[Address]:
    """The host's addresses: an IP literal as is, a name through the resolver (unresolvable: refused)."""
    if _is_literal(host):
        return [ipaddress.ip_address(host)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InvalidRequest(FIELD, f"host {host!r} does not resolve; must be {ALLOWED}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def _checked(url: str, allow_private: bool, resolve: bool) -> list[Address]:
    """The policy; returns the addresses checked (none when `resolve` is off and the host is a name)."""
    parts = urlsplit(check_callback_syntax(url))
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme != "https" and not allow_private:
        raise InvalidRequest(FIELD, f"scheme {parts.scheme!r} is not https; must be {ALLOWED} ({PRIVATE_HINT})")
    if not resolve and not _is_literal(host):
        return []
    addresses = _addresses(host, parts.port or (443 if scheme == "https" else 80))
    if not allow_private:
        for ip in addresses:
            why = _not_public(ip)
            if why:
                what = f"{ip} is" if _is_literal(host) else f"host {host!r} resolves to {ip},"
                raise InvalidRequest(FIELD, f"{what} a {why} address; must be {ALLOWED} ({PRIVATE_HINT})")
    return addresses


def check_url(url: str, allow_private: bool, resolve: bool = True) -> str:
    """The callback URL policy, raising InvalidRequest("callback_url", ...) with one line saying why and what
    is allowed. `resolve`: look the host up and refuse it if ANY of its addresses is not public (an IP
    literal is always checked; resolve=False checks names by syntax only). `allow_private`: http and
    loopback/private/link-local addresses too (development). Returns the URL."""
    _checked(url, allow_private, resolve)
    return url


# ---------------------------------------------------------------------------------------------- signing


def key_secret(master: str, key_id: str | None) -> str:
    """A key's signing secret: hex HMAC-SHA256(master, "webhook:" + key id). Songs submitted without a key
    (the CLI, the Python client) use key id "" so they are still signed, with the master's own derived secret."""
    return hmac.new(master.encode(), f"webhook:{key_id or ''}".encode(), hashlib.sha256).hexdigest()


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The Longsong-Signature header value: `t=<unix seconds>,v1=<hex mac>` (the timestamp is signed too)."""
    return f"t={timestamp},v1={_mac(secret, body, timestamp)}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None) -> bool:
    """True when `header` signs `body` with `secret` and its timestamp is within `tolerance_s` of `now`
    (replays of old deliveries fail). Constant-time; any v1 entry may match (secret rotation)."""
    items = [part.strip().partition("=") for part in (header or "").split(",")]
    stamps = [value for name, _, value in items if name == "t"]
    macs = [value for name, _, value in items if name == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not macs:
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, body, timestamp)
    return any(hmac.compare_digest(expected, mac) for mac in macs)


# ---------------------------------------------------------------------------------------------- delivery


def encode_event(event: dict) -> bytes:
    """The body that is signed and sent: compact JSON with sorted keys."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def _classify(host: str, status: int) -> int:
    if 200 <= status < 300:
        return status
    if status >= 500 or status in (408, 429):
        raise WebhookUnreachable(f"webhook to {host}: answered {status}, will retry")
    if 300 <= status < 400:
        raise WebhookRejected(f"webhook to {host}: answered {status}, a redirect (redirects are not followed)")
    raise WebhookRejected(f"webhook to {host}: answered {status}, not retried (only 408, 429 and 5xx are)")


def deliver(url: str, event: dict, secret: str, *, allow_private: bool, timeout_s: float = 10) -> int:
    """POST `event` signed with `secret` to `url`, once; returns the 2xx status. The policy is checked again
    here and the connection is pinned to an address just checked (the URL's host becomes the Host header
    and the TLS server name, so certificates are still verified for the name): a name re-pointed at a
    private address between check and connect (DNS rebinding) is not followed. No redirects, no proxy
    from the environment, the response body is never read. Raises WebhookRejected or WebhookUnreachable."""
    import httpx

    host = urlsplit(url).hostname or "?"
    try:
        addresses = _checked(url, allow_private, resolve=True)
        target = httpx.URL(url)
    except (InvalidRequest, httpx.InvalidURL) as e:
        raise WebhookRejected(f"webhook to {host}: {e}") from None
    body = encode_event(event)
    headers = {
        "Host": target.netloc.decode("ascii"),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        EVENT_ID_HEADER: str(event.get("id", "")),
    }
    failure = "no address"
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for ip in addresses:  # each was checked; the next one is tried only when connecting fails
            request = client.build_request("POST", target.copy_with(host=str(ip)), headers=headers, content=body,
                                           extensions={"sni_hostname": target.raw_host.decode("ascii")})
            try:
                response = client.send(request, stream=True)  # the body is never read
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                failure = f"cannot connect to {ip} ({type(e).__name__})"
                continue
            except httpx.TimeoutException as e:
                raise WebhookUnreachable(f"webhook to {host}: no answer within {timeout_s:g} s "
                                         f"({type(e).__name__}), will retry") from None
            except httpx.HTTPError as e:
                reason = " ".join(str(e).split()) or "transport error"
                raise WebhookUnreachable(f"webhook to {host}: {type(e).__name__}: {reason}, will retry") from None
            response.close()
            return _classify(host, response.status_code)
    raise WebhookUnreachable(f"webhook to {host}: {failure}, will retry")
