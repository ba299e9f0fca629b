"""asyncio adapters that connect the sans-I/O protocol code (ike/) to sockets and engines."""
