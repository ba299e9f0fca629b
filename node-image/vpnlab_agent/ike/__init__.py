"""IKEv2 (RFC 7296), sans-I/O: wire codec, crypto, proposals, and the state machine.

No sockets, clocks or asyncio in this package: time comes in as `now`, randomness through an
injectable `rng`. vpnlab_agent.io.ike_service is the asyncio adapter.
"""
