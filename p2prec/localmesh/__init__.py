"""The one-command local mesh: ``p2prec up``, ``p2prec down`` and ``p2prec status``.

A supervisor process starts the trainer and 3 datacenters x 3 nodes on 127.0.0.1, restarts a
member that died (like a container restart policy) and stops them all by pid. Everything it
knows lives in a run directory (default ``.p2prec/``): ``mesh.json`` (members, pids, URLs,
commands), the keys, each member's state and log.
"""
