"""Content credentials: a signed C2PA manifest (c2pa-python) in each delivered MP3, WAV and FLAC.

The watermark survives re-encoding but says little; the manifest says what made the song (AI, engine, model,
request hash, watermark id, parent) but only while the file is untouched: a changed byte breaks its hash.
c2pa-rs cannot embed into Ogg: Opus stays unsigned. The chain comes from LONGSONG_C2PA_CERT/KEY, else the dev CA
(devca.py); a private CA's credentials validate, and are trusted only where it is a trust anchor (`verify`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from longsong import __version__
from longsong.atomic import replacing
from longsong.devca import make_dev_ca

SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
LABEL = "org.longsong.song"  # our assertion: the Claim's fields
MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac"}  # what c2pa-rs 0.91 embeds into
UNSUPPORTED = "Ogg/Opus cannot carry C2PA credentials (c2pa-python 0.38): left unsigned"
PEM, CERT, KEY = serialization.Encoding.PEM, "LONGSONG_C2PA_CERT", "LONGSONG_C2PA_KEY"


class CredentialsError(ValueError):
    """The signing certificate or key is unusable; one line naming the setting and what is wrong."""


@dataclass(frozen=True)
class Claim:
    """What the manifest asserts about one song, beside the standard AI-generated action."""

    song_id: str
    engine: str
    model: str
    model_version: str
    request_sha256: str
    watermark_id: int
    title: str
    parent_id: str | None = None


@dataclass(frozen=True)
class CredentialSigner:
    """A checked chain and key; a native c2pa signer is made per file (cheap, and never shared by threads)."""

    chain_pem: bytes
    key_pem: bytes
    alg: str
    subject: str


@dataclass
class Credentials:  # what `read` found: valid = signature and audio hashes check out; trusted = chains to the anchor
    present: bool
    valid: bool = False
    trusted: bool = False
    supported: bool = True
    claim: dict = field(default_factory=dict)
    digital_source_type: str = ""
    signer: str = ""
    parent: str | None = None
    errors: list[str] = field(default_factory=list)


def request_sha256(req) -> str:
    """sha256 of the request's canonical JSON (sorted keys, no spaces): names the exact request, not its text."""
    text = json.dumps(asdict(req), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CredentialsError(f"{setting}: {path} does not exist") from None
    except OSError as e:
        raise CredentialsError(f"{setting}: {path} cannot be read ({e.strerror})") from None


def load_signer(settings) -> CredentialSigner:
    """The configured chain and key (unset: the dev CA's, made if missing), checked so that a bad one fails at
    worker start in one line, not on the first song: PEM, matching, issued by a CA, in date, accepted by c2pa."""
    if bool(settings.c2pa_cert) != bool(settings.c2pa_key):
        raise CredentialsError(f"{KEY if settings.c2pa_cert else CERT}: not set (set both or neither)")
    cert_path, key_path = ((Path(settings.c2pa_cert).expanduser(), Path(settings.c2pa_key).expanduser())
                           if settings.c2pa_cert else make_dev_ca(settings.home / "c2pa"))
    chain_pem, key_pem = _read(CERT, cert_path), _read(KEY, key_path)
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError:
        raise CredentialsError(f"{CERT}: {cert_path} is not a PEM certificate chain") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CredentialsError(f"{KEY}: {key_path} is not an unencrypted PEM private key") from None
    if leaf.public_key() != key.public_key():
        raise CredentialsError(f"{KEY}: {key_path} does not match the certificate in {cert_path}")
    if leaf.issuer == leaf.subject:
        raise CredentialsError(f"{CERT}: {cert_path} starts with a self-signed certificate; C2PA needs a leaf "
                               "issued by a CA (the leaf first, then its CA)")
    if dt.datetime.now(dt.timezone.utc) > leaf.not_valid_after_utc:
        raise CredentialsError(f"{CERT}: {cert_path}'s signing certificate expired on {leaf.not_valid_after_utc:%F}")
    alg = ({"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(key.curve.name) if isinstance(
        key, ec.EllipticCurvePrivateKey) else "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else None)
    if alg is None:
        raise CredentialsError(f"{KEY}: {key_path} is not an EC P-256/384/521 or Ed25519 key")
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    signer = CredentialSigner(chain_pem, key_pem, alg, cn[0].value if cn else leaf.subject.rfc4514_string())
    with wave.open(probe := io.BytesIO(), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(bytes(160))
    try:
        _sign_stream(io.BytesIO(probe.getvalue()), io.BytesIO(), "wav", Claim("probe", "", "", "", "", 0, ""), signer)
    except c2pa.C2paError as e:
        raise CredentialsError(f"{CERT}: c2pa refuses {cert_path} ({' '.join(str(e).split())})") from None
    return signer


def trust_anchor(settings) -> bytes | None:
    """The CA `verify` trusts: the configured chain's root (its last certificate), else the dev CA's (not made)."""
    path = Path(settings.c2pa_cert).expanduser() if settings.c2pa_cert else settings.home / "c2pa" / "ca.pem"
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return None
    return certs[-1].public_bytes(PEM) if len(certs) > 1 or not settings.c2pa_cert else None


def _sign_stream(src, dst, fmt: str, claim: Claim, signer: CredentialSigner) -> None:
    """The c2pa.created action (trainedAlgorithmicMedia; softwareAgent longsong + engine/model), our assertion
    with the Claim, and the parent song as a componentOf ingredient (its files are not needed offline)."""
    agent = {"name": "longsong", "version": __version__, "engine": claim.engine, "model": claim.model,
             "model_version": claim.model_version}
    manifest = {"claim_generator_info": [{"name": "longsong", "version": __version__}], "title": claim.title,
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": SOURCE_TYPE, "softwareAgent": agent}]}},
                    {"label": LABEL, "data": asdict(claim)}],
                "ingredients": [{"title": claim.parent_id, "format": MIME[fmt], "relationship": "componentOf",
                                 "instance_id": f"longsong:song:{claim.parent_id}"}] if claim.parent_id else []}
    info = c2pa.C2paSignerInfo(signer.alg, signer.chain_pem, signer.key_pem, None)  # no TSA: signing stays offline
    with c2pa.Signer.from_info(info) as native, c2pa.Builder(manifest) as builder:
        builder.sign(native, MIME[fmt], src, dst)


def sign(path: str | Path, fmt: str, claim: Claim, signer: CredentialSigner) -> bool:
    """Embed a signed manifest into `path` in place (temporary file, then rename); False where c2pa cannot (Opus)."""
    if fmt not in MIME:
        return False
    with replacing(path) as tmp, open(path, "rb") as src, open(tmp, "w+b") as dst:
        _sign_stream(src, dst, fmt, claim, signer)
    return True


def summary(signed: dict[str, bool], signer: CredentialSigner | None, claim: Claim) -> dict:
    """metadata.json's `credentials`: which files carry them, and why the others do not."""
    return {"standard": "C2PA", "assertion": LABEL, "signer": signer.subject if signer else None,
            "request_sha256": claim.request_sha256, "signed": sorted(f for f, ok in signed.items() if ok),
            "unsigned": {f: UNSUPPORTED if f not in MIME else "signing off" for f, ok in signed.items() if not ok}}


def read(path: str | Path, trust_pem: bytes | None = None) -> Credentials:
    """What `path`'s manifest says and whether it validates; `trust_pem`: the CA that makes it trusted. The
    container is told by its first bytes (a renamed file reads as what it is); ValueError where it does not parse."""
    with open(path, "rb") as f:
        head = f.read(4)
        fmt = next((k for k, magic in (("wav", b"RIFF"), ("flac", b"fLaC"), ("opus", b"OggS"), ("mp3", b"ID3"),
                                       ("mp3", b"\xff\xfb"), ("mp3", b"\xff\xf3")) if head.startswith(magic)), None)
        if fmt not in MIME:
            return Credentials(False, supported=False, errors=[UNSUPPORTED if fmt else "not a WAV, FLAC or MP3 file"])
        f.seek(0)
        try:
            with (c2pa.Context.from_dict({"trust": {"trust_anchors": trust_pem.decode()}}) if trust_pem
                  else c2pa.Context()) as ctx, c2pa.Reader(MIME[fmt], f, context=ctx) as reader:
                state, store = reader.get_validation_state(), json.loads(reader.json())
        except c2pa.C2paError.ManifestNotFound:
            return Credentials(False)
        except c2pa.C2paError as e:
            raise ValueError(f"damaged or truncated ({str(e).split(': ', 1)[-1]})") from None
    active = store["manifests"][store["active_manifest"]]
    assertions = {re.sub(r"\.v\d+$", "", a["label"]): a["data"] for a in active.get("assertions", [])}
    created = [a for a in assertions.get("c2pa.actions", {}).get("actions", []) if a["action"] == "c2pa.created"]
    return Credentials(True, valid=state in ("Valid", "Trusted"), trusted=state == "Trusted",
                       claim=assertions.get(LABEL, {}), digital_source_type=created[0].get("digitalSourceType", "")
                       if created else "", signer=active.get("signature_info", {}).get("common_name", ""),
                       parent=next((i["title"] for i in active.get("ingredients", [])
                                    if i["relationship"] == "componentOf"), None),
                       errors=[f"{s['code']}: {s.get('explanation', '')}" for s in store.get("validation_status", [])])
