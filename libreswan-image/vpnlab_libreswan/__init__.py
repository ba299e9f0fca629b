"""libreswan 4.10's pluto run under the vpnlab router agent (the libreswan image only).

The agent configures interfaces and routes and answers `ctl status`; LibreswanService runs pluto
with the ipsec.conf/ipsec.secrets the orchestrator rendered (vpnlab.kinds.libreswan) and reports
pluto's IKE and child SAs in the agent's format.
"""
