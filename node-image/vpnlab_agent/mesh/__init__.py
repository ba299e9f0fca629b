"""Advanced Mesh VPN: on-demand branch-to-branch shortcuts signalled through the hub over IKEv2.

messages.py (wire bodies of our private notifies), licence.py (tunnel limits), manager.py (branch
logic, sans-I/O), relay.py (hub logic, sans-I/O), hubcount.py (hub per-pair nftables counters),
conntrack.py and service.py (the asyncio side inside the agent).
"""
