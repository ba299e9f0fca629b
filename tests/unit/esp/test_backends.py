"""The OpenSSL-context back end (what the node image runs: Debian's cryptography 38) against the
public cryptography API, in whichever interpreter on this machine has it.

The project venv usually has a newer cryptography without those bindings, so its own tests exercise
the "aead-api" back end; this test runs a known-answer script under /usr/bin/python3 (Debian's
python3-cryptography, as in the image) when that one offers the OpenSSL bindings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

NODE_IMAGE = Path(__file__).resolve().parents[3] / "node-image"

SCRIPT = r"""
import hmac, os, struct
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from vpnlab_agent.esp.ciphers import BACKEND
from vpnlab_agent.esp.codec import AuthenticationFailed, EspInbound, EspOutbound
from vpnlab_agent.sa import EspAlgorithm

assert BACKEND == "openssl-ctx", BACKEND
SPI = 0x11223344
for bits in (128, 256):
    alg = EspAlgorithm("aes-gcm-16", bits)
    ek = os.urandom(bits // 8 + 4)
    out, inb = EspOutbound(SPI, alg, ek, b""), EspInbound(SPI, alg, ek, b"")
    for n in range(20, 1500, 37):
        inner = b"\x45" + os.urandom(n - 1)  # an IPv4 first byte: next header 4
        pkt = out.encapsulate(inner)
        seq = out.seq
        pad = -(n + 2) % 4
        iv, aad = struct.pack(">Q", seq), struct.pack(">II", SPI, seq)
        ref = aad + iv + AESGCM(ek[:-4]).encrypt(ek[-4:] + iv, inner + bytes(range(1, pad + 1)) + bytes([pad, 4]), aad)
        assert pkt == ref, (bits, n)
        bad = bytearray(pkt); bad[n % len(pkt[8:]) + 8] ^= 0x20
        try:
            inb.decapsulate(bytes(bad))
            raise SystemExit("forged GCM packet accepted")
        except AuthenticationFailed:
            pass
        assert inb.decapsulate(pkt) == inner
for bits in (128, 256):
    alg = EspAlgorithm("aes-cbc", bits, "hmac-sha256-128")
    ek, ik = os.urandom(bits // 8), os.urandom(32)
    out, inb = EspOutbound(SPI, alg, ek, ik, rng=os.urandom), EspInbound(SPI, alg, ek, ik)
    for n in range(20, 1500, 37):
        inner = b"\x45" + os.urandom(n - 1)  # an IPv4 first byte: next header 4
        pkt = out.encapsulate(inner)
        iv = pkt[8:24]
        pad = -(n + 2) % 16
        enc = Cipher(algorithms.AES(ek), modes.CBC(iv)).encryptor()
        body = struct.pack(">II", SPI, out.seq) + iv + enc.update(inner + bytes(range(1, pad + 1)) + bytes([pad, 4]))
        assert pkt == body + hmac.new(ik, body, "sha256").digest()[:16], (bits, n)
        bad = bytearray(pkt); bad[-1] ^= 1
        try:
            inb.decapsulate(bytes(bad))
            raise SystemExit("forged CBC packet accepted")
        except AuthenticationFailed:
            pass
        assert inb.decapsulate(pkt) == inner
print("ok")
"""


def _has_ctx_backend(python: str) -> bool:
    probe = ("from cryptography.hazmat.bindings.openssl.binding import Binding; "
             "import sys; sys.exit(0 if hasattr(Binding().lib, 'EVP_CipherInit_ex') else 1)")
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_openssl_context_backend_matches_the_reference() -> None:
    candidates = [p for p in (sys.executable, "/usr/bin/python3") if Path(p).exists()]
    python = next((p for p in candidates if _has_ctx_backend(p)), None)
    if python is None:
        pytest.skip("no interpreter here has cryptography's OpenSSL EVP bindings (Debian python3-cryptography 38)")
    r = subprocess.run([python, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(NODE_IMAGE), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
