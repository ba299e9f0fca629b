"""ESP (RFC 4303): `codec` (packets, one object per SA direction), `trailer` (per-SA trailer
formats), `replay` (anti-replay window), `ciphers` (AES-GCM / AES-CBC+HMAC back ends).
UDP encapsulation (RFC 3948) lives in the engines.

Nothing is re-exported here on purpose: `vpnlab_agent.sa` imports `esp.trailer`, and `esp.codec`
imports `sa`, so this package must not import the codec when it is loaded.
"""
