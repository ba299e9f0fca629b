"""strongSwan mode: a node that runs real strongSwan (charon-systemd, swanctl, kernel-libipsec).

Used for third-party interop: the agent renders swanctl.conf/strongswan.conf from the node config,
runs charon as its child and reports its SAs (over VICI) in the agent's own status format.
"""
