"""Wire codec cost against a plain memory copy of the same bytes, measured in the same run.

    python bench/codec_bench.py [--rows 32768] [--dim 64] [--repeat 50]

Encodes and decodes one delta (rows x dim float32 + int64 keys + int64 row versions, 8.5 MB by
default), unsigned and signed (BLAKE3 digest of all frames + Ed25519), and prints best-of-N
times with their ratio to copying the same number of bytes once (the base is a cache-hot
copy, the fastest a copy gets; a copy from a source out of cache is shown for context).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

import blake3
import numpy as np

from p2prec.core.versions import pack
from p2prec.wire.codec import decode, encode, frames_digest
from p2prec.wire.messages import ParamDelta, TableRows
from p2prec.wire.signing import Signer


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def make_delta(rows: int, dim: int) -> ParamDelta:
    rng = np.random.default_rng(0)
    version = pack(1, 2)
    table = TableRows(
        keys=rng.integers(0, 2**62, rows),
        versions=np.full(rows, version, dtype=np.int64),
        rows=rng.standard_normal((rows, dim), dtype=np.float32),
    )
    shards = tuple(range(256))
    return ParamDelta(shards, (pack(1, 1),) * 256, (version,) * 256, {"item": table})


def measure(rows: int, dim: int, repeat: int) -> list[tuple[str, float]]:
    msg = make_delta(rows, dim)
    signer = Signer.generate()
    verifier = signer.verifier()
    plain = encode(msg, None)
    signed = encode(msg, signer)
    views = [memoryview(f) for f in plain[2:]]
    nbytes = sum(len(memoryview(f)) for f in plain)
    src = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    cold = itertools.cycle([src.copy() for _ in range(8)])  # 8 x 9 MB: more than the caches
    digest = frames_digest(plain[0], views)
    signature = bytes(signed[1])
    cases: list[tuple[str, Callable[[], object]]] = [
        ("memcpy, preallocated (np.copyto)", lambda: np.copyto(dst, src)),
        ("memcpy, allocating (np.copy)", lambda: np.copy(src)),
        ("memcpy, source not in cache", lambda: np.copyto(dst, next(cold))),
        ("encode, unsigned", lambda: encode(msg, None)),
        ("decode, unsigned (trust_unsigned)", lambda: _decode_trusted(plain)),
        ("encode + decode, unsigned", lambda: _decode_trusted(encode(msg, None))),
        ("BLAKE3 digest, 1 thread", lambda: _digest_1t(plain[0], views)),
        ("BLAKE3 digest, as the codec does", lambda: frames_digest(plain[0], views)),
        ("Ed25519 sign (32-byte digest)", lambda: signer.sign(digest)),
        ("Ed25519 verify (32-byte digest)", lambda: verifier.verify(digest, signature)),
        ("encode, signed (digest + sign)", lambda: encode(msg, signer)),
        ("decode, verified (digest + verify)", lambda: decode(signed, verifier)),
    ]
    return [(name, best_of(fn, repeat)) for name, fn in cases]


def _decode_trusted(frames: list[bytes | memoryview]) -> object:
    return decode(frames, None, trust_unsigned=True)


def _digest_1t(header: bytes | memoryview, views: list[memoryview]) -> bytes:
    h = blake3.blake3(max_threads=1)
    for part in (header, *views):
        h.update(part)
    return h.digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    nbytes = args.rows * (args.dim * 4 + 16)
    results = measure(args.rows, args.dim, args.repeat)
    base = results[0][1]
    print(f"delta: {args.rows} rows x dim {args.dim} float32 + int64 keys/versions")
    print(f"payload {nbytes / 1e6:.2f} MB, best of {args.repeat}")
    print(f"{'operation':<38}{'ms':>9}{'GB/s':>9}{'x memcpy':>10}")
    for name, seconds in results:
        rate = nbytes / seconds / 1e9
        print(f"{name:<38}{seconds * 1e3:>9.3f}{rate:>9.1f}{seconds / base:>10.2f}")


if __name__ == "__main__":
    main()
