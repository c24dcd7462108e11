"""asyncio + pyzmq drivers: the CURVE transport, key files, the replica driver, persistence."""
