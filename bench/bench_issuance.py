"""How long does hyprov take to issue data-plane certificates?

    python bench/bench_issuance.py --dps 100,1000,10000 --key-type ec-p256 [--workers 2]

Two paths:

* keygen+sign: hyprov generates each DP key and signs its leaf (then PEM-encodes
  key and certificate, as apply writes them).
* csr+sign: keys stay on the nodes; hyprov checks each node's CSR
  (:func:`hyprov.csr.verify_csr`) and signs its public key. The CSRs are made
  before the clock starts, as the nodes would make them.

The issuing CA is an intermediate under a root, both of ``--ca-key-type``
(default: the DP key type). ``--workers N`` splits the DPs over N forked
processes (CPU time then includes the children). Wall and CPU seconds are both
printed: on a shared machine wall time also measures the neighbours.
Target: 10,000 DPs under 5 s with ec-p256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from hyprov.certs import csr, pki

# Set in the parent before forking; workers inherit them.
_CA: tuple[x509.Certificate, pki.PrivateKey] | None = None
_NOW = dt.datetime.now(dt.UTC)


def _make_ca(key_type: str) -> tuple[x509.Certificate, pki.PrivateKey]:
    root_key, int_key = pki.generate_key(key_type), pki.generate_key(key_type)
    root = pki.issue_root(root_key, common_name="Bench Root", validity_days=3650, now=_NOW)
    inter = pki.issue_intermediate(
        int_key.public_key(), root, root_key, common_name="Bench CA", validity_days=1825, now=_NOW
    )
    return inter, int_key


def keygen_and_sign(key_type: str, first: int, count: int) -> int:
    assert _CA is not None
    ca_cert, ca_key = _CA
    for i in range(first, first + count):
        key = pki.generate_key(key_type)
        cert = pki.issue_dp_leaf(
            key.public_key(), ca_cert, ca_key, node_name=f"dp-{i}", validity_days=90, now=_NOW
        )
        pki.key_pem(key)
        pki.cert_pem(cert)
    return count


def csr_and_sign(key_type: str, first: int, csrs: Sequence[bytes]) -> int:
    assert _CA is not None
    ca_cert, ca_key = _CA
    for i, pem in enumerate(csrs, start=first):
        pub = csr.verify_csr(pem, expected_key_type=key_type, expected_cn=f"dp-{i}")
        cert = pki.issue_dp_leaf(
            pub, ca_cert, ca_key, node_name=f"dp-{i}", validity_days=90, now=_NOW
        )
        pki.cert_pem(cert)
    return len(csrs)


def make_csrs(key_type: str, n: int) -> list[bytes]:
    """What n nodes would send back (made outside the measurement)."""
    out = []
    for i in range(n):
        key = pki.generate_key(key_type)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dp-{i}")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        out.append(csr.public_bytes(serialization.Encoding.PEM))
    return out


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(path: str, key_type: str, n: int, workers: int) -> tuple[float, float]:
    csrs = make_csrs(key_type, n) if path == "csr+sign" else []
    bounds = [(w * n // workers, (w + 1) * n // workers) for w in range(workers)]
    c0, w0 = _cpu(), time.perf_counter()
    if workers == 1:
        if path == "keygen+sign":
            keygen_and_sign(key_type, 0, n)
        else:
            csr_and_sign(key_type, 0, csrs)
    else:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            if path == "keygen+sign":
                futures = [pool.submit(keygen_and_sign, key_type, a, b - a) for a, b in bounds]
            else:
                futures = [pool.submit(csr_and_sign, key_type, a, csrs[a:b]) for a, b in bounds]
            assert sum(f.result() for f in futures) == n
    return time.perf_counter() - w0, _cpu() - c0


def main(argv: list[str] | None = None) -> int:
    global _CA
    ap = argparse.ArgumentParser(description="Time DP certificate issuance.")
    ap.add_argument("--dps", default="100,1000,10000", help="comma-separated DP counts")
    ap.add_argument("--key-type", default="ec-p256", choices=pki.KEY_TYPES)
    ap.add_argument("--ca-key-type", default=None, choices=pki.KEY_TYPES)
    ap.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.dps.split(",") if n.strip()]
    ca_type = args.ca_key_type or args.key_type
    _CA = _make_ca(ca_type)
    load = os.getloadavg()[0]
    print(
        f"DP key {args.key_type}, CA key {ca_type}, {args.workers} process(es), "
        f"{os.cpu_count()} CPUs, load {load:.1f}"
    )
    print(f"{'path':<12} {'DPs':>7} {'wall s':>8} {'cpu s':>8} {'ms/cert':>8}")
    for n in counts:
        for path in ("keygen+sign", "csr+sign"):
            wall, cpu = run(path, args.key_type, n, args.workers)
            print(f"{path:<12} {n:>7} {wall:>8.2f} {cpu:>8.2f} {wall / n * 1000:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
