"""IKEv2 load balancer: a VRRP cluster of gateways that redirects new clients (RFC 5685).

status.py (the members' load-status messages and the pool), selection.py (which member takes the
next client), keepalived.py (VRRP by keepalived: config and its notify lines); sans-I/O all three.
"""
