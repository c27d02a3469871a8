"""The dev stack's and the tests' signing CA for content credentials: a root and one leaf, made with
`cryptography` at first use (never committed). c2pa refuses a self-signed leaf, hence the two."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from longsong.atomic import temp_name

PEM = serialization.Encoding.PEM


def _issue(cn: str, key, issuer: x509.Certificate | None, issuer_key) -> x509.Certificate:
    """A root CA (no issuer) or a leaf with what C2PA asks of one: digitalSignature, an allowed EKU
    (emailProtection), SKI/AKI. Ten years: a dev CA should never be the thing that expires."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                                      "longsong")])
    now, leaf = dt.datetime.now(dt.timezone.utc), issuer is not None
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if leaf else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.BasicConstraints(ca=not leaf, path_length=None if leaf else 0), critical=True)
         .add_extension(x509.KeyUsage(leaf, False, False, False, False, not leaf, not leaf, False, False), True))
    if leaf:
        b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False))
    return b.sign(issuer_key, hashes.SHA256())


def make_dev_ca(folder: str | Path) -> tuple[Path, Path]:
    """A root CA and a leaf it issued in `folder`: ca.pem, signer.pem (leaf, then CA), signer.key (mode 600); the
    CA's key is thrown away. Built beside `folder`, then renamed into place, so workers starting at once end with
    one matching pair. Returns (chain, key); an existing pair is kept."""
    folder = Path(folder)
    chain, key_file = folder / "signer.pem", folder / "signer.key"
    if chain.exists() and key_file.exists():
        return chain, key_file
    folder.parent.mkdir(parents=True, exist_ok=True)
    (tmp := folder.parent / f".{temp_name(folder.name)}").mkdir(mode=0o700)
    try:
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _issue("longsong dev root CA", ca_key, None, ca_key)
        (tmp / "ca.pem").write_bytes(ca.public_bytes(PEM))
        (tmp / "signer.pem").write_bytes(_issue("longsong dev signer", key, ca, ca_key).public_bytes(PEM)
                                         + ca.public_bytes(PEM))
        with os.fdopen(os.open(tmp / "signer.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        try:
            os.rename(tmp, folder)  # replaces an empty folder; a full one: another process won
        except OSError:
            if not chain.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return chain, key_file
