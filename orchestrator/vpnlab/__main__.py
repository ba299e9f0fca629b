"""`python -m vpnlab`: the same CLI as the `vpnlab` script."""

from vpnlab.cli import main

main()
