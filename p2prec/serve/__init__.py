"""The HTTP API of nodes and of the trainer (aiohttp): queries, status, metrics, health, admin.

Never imports torch: the trainer's app receives its ``Trainer`` object from the caller.
"""
