"""Fault injection for the local mesh (``p2prec up``) and the docker-compose mesh.

``p2prec chaos ACTION`` or ``python -m p2prec.chaos ACTION``: kill-node, pause-node,
resume-node, partition-dc, heal, delay-wan, throttle-wan, poison-trainer, and ``run`` (a seeded
random schedule of them, then a convergence check).
"""
