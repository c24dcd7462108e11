"""The rogue peer's probes (``p2prec.proof.rogue_probes``) without sockets: each is stopped by
the layer it names, as a node's transport checks and codec would (the chaos scenario in
``tests/test_reliability_rogue.py`` checks the same on real processes, by their counters)."""

from __future__ import annotations

import numpy as np
import pytest

from p2prec.core.membership_messages import from_body
from p2prec.io.transport import parse_envelope
from p2prec.model.layout import StoreLayout
from p2prec.proof import rogue_probes as rp
from p2prec.proof.rogue_probes import Envelopes, Layer, Probe
from p2prec.sim.lineage import generate
from p2prec.wire.codec import decode, encode
from p2prec.wire.errors import RemoteProtocolError
from p2prec.wire.limits import DEFAULT_LIMITS
from p2prec.wire.messages import MembershipEnvelope, ParamDelta
from p2prec.wire.signing import Signer, Verifier

LAYOUT = StoreLayout(row_shards=8, dim=4, tables=("user", "item"))
ROGUE = "dc3-n3"
ENV = Envelopes("127.0.0.1:5555", ROGUE)


def stopped_by(probe: Probe, verifier: Verifier) -> Layer | None:
    """The layer of a node that refuses ``probe`` (None: it passes to the replica). Mirrors
    ``Transport._envelope`` (envelope, frame count) and ``NodeDriver._decode``."""
    envelope, *frames = probe.frames
    try:
        env = parse_envelope(envelope, ROGUE)
    except ValueError:
        return Layer.TRANSPORT
    if not 2 <= len(frames) <= DEFAULT_LIMITS.max_frames:
        return Layer.TRANSPORT
    if env.node != ROGUE:
        return Layer.SPOOFED
    try:
        msg = decode(frames, verifier)
        if isinstance(msg, MembershipEnvelope):
            from_body(msg.kind, msg.body)
    except (RemoteProtocolError, ValueError):
        return Layer.CODEC
    return None


@pytest.fixture(scope="module")
def signed() -> tuple[Verifier, list[list[bytes]], np.ndarray]:
    """The trainer's verifier, genuine signed deltas of a lineage, and the head's vector."""
    trainer = Signer.generate()
    line = generate(LAYOUT, 3, 6, rows_per_step=4, key_space=40, dense_every=2)
    frames = [[bytes(f) for f in encode(d, trainer)] for d in line.deltas]
    return trainer.verifier(), frames, line.states[-1].vector


def all_probes(genuine: list[list[bytes]], vector: np.ndarray, verifier: Verifier) -> list[Probe]:
    richest = max(genuine, key=len)
    delta = decode(richest, verifier)
    assert isinstance(delta, ParamDelta)
    n = LAYOUT.n_shards
    return [
        *rp.garbage(np.random.default_rng(1), ENV, 90),
        *rp.truncated(ENV, richest),
        *rp.forged(ENV, rp.next_step(delta, vector.tolist()), richest),
        *rp.oversized(ENV),
        *rp.wrong_types(ENV, richest, n),
        *rp.requests(ENV, n),
        *rp.bad_envelopes(ENV, richest, "dc1-n1"),
        *rp.lying_digests(ENV, vector.tolist(), 1),
        *rp.replayed(ENV, genuine, "replayed"),
        *rp.membership_lies(ENV, ("dc1-n1", "127.0.0.1:7000", "dc1")),
    ]


def test_every_probe_is_stopped_by_the_layer_it_names(
    signed: tuple[Verifier, list[list[bytes]], np.ndarray],
) -> None:
    verifier, genuine, vector = signed
    probes = all_probes(genuine, vector, verifier)
    wrong = []
    for probe in probes:
        layer = stopped_by(probe, verifier)
        expected = probe.layer if probe.layer not in (Layer.REPLICA, Layer.HARMLESS) else None
        if layer != expected:
            wrong.append(f"{probe.kind}: names {probe.layer}, stopped by {layer}")
    assert not wrong, "\n".join(wrong)
    kinds = {p.kind.partition(".")[0] for p in probes}
    assert kinds >= {"garbage", "truncated", "unsigned", "signed", "tampered", "oversized"}
    assert kinds >= {"type", "request", "envelope", "digest", "replayed", "membership"}


def test_every_frame_is_cut_at_every_prefix_class(
    signed: tuple[Verifier, list[list[bytes]], np.ndarray],
) -> None:
    _verifier, genuine, _vector = signed
    richest = max(genuine, key=len)
    cuts = [p for p in rp.truncated(ENV, richest) if p.kind.startswith("truncated.frame")]
    for i, frame in enumerate(richest):
        mine = [p.frames[1 + i] for p in cuts if p.kind == f"truncated.frame{i}"]
        assert sorted(map(len, mine)) == rp.prefix_lengths(len(frame))
    assert rp.prefix_lengths(100) == [0, 1, 50, 99]
    assert rp.prefix_lengths(1) == [0] and rp.prefix_lengths(0) == []


def test_forgeries_would_be_the_next_step_and_the_link_probe_is_over_the_limit(
    signed: tuple[Verifier, list[list[bytes]], np.ndarray],
) -> None:
    verifier, genuine, vector = signed
    delta = decode(max(genuine, key=len), verifier)
    assert isinstance(delta, ParamDelta)
    step = rp.next_step(delta, vector.tolist())
    assert all(v == b + 1 for b, v in zip(step.bases, step.versions, strict=True))
    assert step.bases == tuple(int(vector[s]) for s in delta.shards)
    trusted = decode(encode(step, None), None, trust_unsigned=True)  # well-formed, if trusted
    assert isinstance(trusted, ParamDelta)
    link = rp.over_link(ENV)
    assert max(map(len, link.frames)) > DEFAULT_LIMITS.max_frame_bytes
