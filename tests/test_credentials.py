"""Content credentials with the real c2pa library on files the project's own encoder wrote: sign and read back
per format, trust only with the CA as anchor, a changed byte fails validation, and the signing chain's checks."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from longsong import credentials
from longsong.audio.encode import decode, encode
from longsong.credentials import SOURCE_TYPE, Claim, CredentialsError, load_signer, make_dev_ca, read, sign
from longsong.request import SongRequest
from longsong.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LONGSONG = Path(sys.executable).parent / "longsong"
SR = 32000
CLAIM = Claim("song-abc", "procedural", "procedural-v1", "r3", "ab" * 32, 0x1234ABCD, "warm house groove")
SIGNED = ("wav", "mp3", "flac")


def tone(seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 330 * t)]).astype(np.float32)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A data dir whose dev CA signs this module's files (made by load_signer, as at worker start)."""
    return tmp_path_factory.mktemp("c2pa-home")


@pytest.fixture(scope="module")
def signer(home):
    return load_signer(Settings(home=home))


@pytest.fixture(scope="module")
def anchor(home, signer) -> bytes:
    return (home / "c2pa" / "ca.pem").read_bytes()


def encoded(folder: Path, fmt: str, name: str = "track") -> Path:
    path = folder / f"{name}.{fmt}"
    encode(tone(), SR, fmt, path, {"title": CLAIM.title})
    return path


@pytest.mark.parametrize("fmt", SIGNED)
def test_sign_and_read_back(tmp_path, fmt, signer, anchor):
    path = encoded(tmp_path, fmt)
    before, size = decode(path)[0], path.stat().st_size
    assert sign(path, fmt, CLAIM, signer) is True
    got = read(path, anchor)
    assert got.present and got.valid and got.trusted and got.errors == []
    assert got.claim == asdict(CLAIM) and got.digital_source_type == SOURCE_TYPE
    assert got.signer == "longsong dev signer" and got.parent is None
    assert 0 < path.stat().st_size - size < 16384  # the manifest: a few kB
    assert np.array_equal(decode(path)[0], before)  # the audio is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left beside it


@pytest.mark.parametrize("fmt", SIGNED)
def test_untrusted_without_the_ca_and_invalid_once_modified(tmp_path, fmt, signer, anchor):
    path = encoded(tmp_path, fmt)
    sign(path, fmt, CLAIM, signer)
    plain = read(path)
    assert plain.present and plain.valid and not plain.trusted
    assert any(e.startswith("signingCredential.untrusted") for e in plain.errors)
    other = make_dev_ca(tmp_path / "other-ca")[0].parent / "ca.pem"
    assert not read(path, other.read_bytes()).trusted
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of the audio data
    path.write_bytes(bytes(data))
    changed = read(path, anchor)
    assert changed.present and not changed.valid and not changed.trusted
    assert any(e.startswith("assertion.dataHash.mismatch") for e in changed.errors)


def test_parent_song_and_request_hash(tmp_path, signer, anchor):
    path = encoded(tmp_path, "mp3")
    sign(path, "mp3", replace(CLAIM, parent_id="song-parent"), signer)
    got = read(path, anchor)
    assert got.trusted and got.parent == "song-parent" and got.claim["parent_id"] == "song-parent"
    req = SongRequest(prompt="warm house groove", request_id="r1")
    assert credentials.request_sha256(req) == credentials.request_sha256(SongRequest(prompt="warm house groove",
                                                                                     request_id="r1"))
    assert credentials.request_sha256(req) != credentials.request_sha256(replace(req, seed=3))


def test_opus_is_left_unsigned_and_says_so(tmp_path, signer):
    path = encoded(tmp_path, "opus")
    data = path.read_bytes()
    assert sign(path, "opus", CLAIM, signer) is False and path.read_bytes() == data
    got = read(path)
    assert not got.present and not got.supported and "Opus" in got.errors[0]
    assert read(encoded(tmp_path, "wav", "unsigned")).present is False


def test_truncated_signed_wav_does_not_parse(tmp_path, signer):
    path = encoded(tmp_path, "wav")
    sign(path, "wav", CLAIM, signer)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        read(path)


def test_dev_ca_is_made_once_with_a_private_key_file(tmp_path):
    settings = Settings(home=tmp_path / "home")
    first = load_signer(settings)
    folder = tmp_path / "home" / "c2pa"
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "signer.key", "signer.pem"]
    assert (folder / "signer.key").stat().st_mode & 0o777 == 0o600
    assert load_signer(settings) == first  # kept, not remade
    assert credentials.trust_anchor(settings) == (folder / "ca.pem").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["home"]  # no build folder left beside it


# ------------------------------------------------------------------------------------ the signing chain's checks


def _cert(cn: str, key, issuer_name: x509.Name | None, issuer_key, days: float, ca: bool,
          aki: bool = True) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=400))
         .not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if not ca:
        b = (b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False))
    if aki:  # C2PA's certificate profile wants the issuer's key id
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _chain(folder: Path, case: str) -> Settings:
    """Settings pointing at a chain and key broken as `case` says."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test root", ca_key, None, ca_key, 3650, ca=True)
    leaf = _cert("test signer", key, ca.subject, ca_key, -1 if case == "expired" else 365, ca=False,
                 aki=case != "no-aki")
    cert, key_file = folder / "chain.pem", folder / "key.pem"
    cert.write_bytes({"self-signed": _pem(_cert("me", key, None, key, 365, ca=False)),
                      "not-pem": b"hello\n"}.get(case, _pem(leaf, ca)))
    other = ec.generate_private_key(ec.SECP256R1())
    key_file.write_bytes(_key_pem(other if case == "wrong-key" else key))
    if case == "missing-cert":
        cert.unlink()
    if case == "missing-key":
        key_file.unlink()
    return Settings(home=folder / "home", c2pa_cert=str(cert), c2pa_key="" if case == "no-key" else str(key_file))


def test_a_proper_chain_from_settings_signs_and_is_trusted_by_its_root(tmp_path):
    settings = _chain(tmp_path, "ok")
    signer = load_signer(settings)
    path = encoded(tmp_path, "flac")
    sign(path, "flac", CLAIM, signer)
    assert read(path, credentials.trust_anchor(settings)).trusted and not (tmp_path / "home" / "c2pa").exists()


@pytest.mark.parametrize("case, setting, words", [
    ("self-signed", "LONGSONG_C2PA_CERT", "self-signed"),
    ("missing-cert", "LONGSONG_C2PA_CERT", "does not exist"),
    ("missing-key", "LONGSONG_C2PA_KEY", "does not exist"),
    ("wrong-key", "LONGSONG_C2PA_KEY", "does not match the certificate"),
    ("not-pem", "LONGSONG_C2PA_CERT", "is not a PEM certificate chain"),
    ("expired", "LONGSONG_C2PA_CERT", "expired on"),
    ("no-key", "LONGSONG_C2PA_KEY", "not set"),
    ("no-aki", "LONGSONG_C2PA_CERT", "c2pa refuses"),  # what only the library checks: its test signature
])
def test_unusable_chain_is_one_line_naming_the_setting(tmp_path, case, setting, words):
    with pytest.raises(CredentialsError) as e:
        load_signer(_chain(tmp_path, case))
    message = str(e.value)
    assert message.startswith(setting + ": ") and words in message and "\n" not in message


def test_cpu_worker_with_a_self_signed_certificate_exits_2_in_one_line(tmp_path):
    settings = _chain(tmp_path, "self-signed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env.update(LONGSONG_HOME=str(tmp_path / "home"), LONGSONG_C2PA_CERT=settings.c2pa_cert,
               LONGSONG_C2PA_KEY=settings.c2pa_key, TEMPORAL_ADDRESS="127.0.0.1:1")
    run = subprocess.run([sys.executable, "-m", "worker_cpu"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().startswith("worker_cpu: LONGSONG_C2PA_CERT: ") and "self-signed" in run.stderr
    assert run.stderr.strip().count("\n") == 0


# --------------------------------------------------------------------------------------------- longsong verify


def verify(path: Path, home: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env["LONGSONG_HOME"] = str(home)
    return subprocess.run([str(LONGSONG), "verify", str(path), *extra], env=env, capture_output=True, text=True,
                          timeout=120)


def test_verify_reports_the_credentials(tmp_path, home, signer):
    path = encoded(tmp_path, "wav")
    sign(path, "wav", CLAIM, signer)
    run = verify(path, home, "--json")
    assert run.returncode == 1, run.stderr  # no watermark in a plain tone: the exit code stays the watermark's
    got = json.loads(run.stdout)["credentials"]
    assert got["present"] and got["valid"] and got["trusted"] and got["claim"]["song_id"] == CLAIM.song_id
    text = verify(path, home)
    assert "content credentials: trusted; C2PA, signed by 'longsong dev signer'; song song-abc" in text.stdout
    elsewhere = json.loads(verify(path, tmp_path / "other-home", "--json").stdout)["credentials"]
    assert elsewhere["valid"] and not elsewhere["trusted"]  # another data dir: no dev CA to trust
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert "INVALID" in verify(path, home).stdout
    path.write_bytes(bytes(data[: len(data) // 2]))
    cut = verify(path, home)
    assert cut.returncode == 2 and cut.stderr.strip().count("\n") == 0 and "damaged or truncated" in cut.stderr
