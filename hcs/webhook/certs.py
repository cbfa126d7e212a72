"""Self-signed serving certificates for tests, benchmarks and the local cluster (openssl CLI).

Production certificates come from cert-manager or the chart; this is for places without them.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hcs.errors import ConfigError


@dataclass(frozen=True)
class CertPaths:
    ca: Path  # CA certificate (the caBundle)
    ca_key: Path
    cert: Path  # serving certificate signed by the CA
    key: Path


def _san(hosts: tuple[str, ...]) -> str:
    parts = []
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            parts.append(f"IP:{h}")
        except ValueError:
            parts.append(f"DNS:{h}")
    return ",".join(parts)


def generate_certs(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), *, days: int = 30,
                   name: str = "webhook", ca: CertPaths | None = None, not_after: str | None = None,
                   usage: str = "serverAuth") -> CertPaths:
    """A CA (unless given) and an ECDSA P-256 serving certificate for ``hosts`` signed by it.

    ``not_after`` (``YYYYMMDDHHMMSSZ``) replaces ``days`` with a fixed end date, e.g. one in the past
    for an expired certificate (signed with ``openssl ca``, which accepts explicit dates). ``usage`` is
    the extendedKeyUsage (``clientAuth`` for a client certificate whose CN is ``hosts[0]``).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError("openssl not found on PATH; install it (apt-get install openssl) to generate certificates")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        proc = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ConfigError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()[:500]}")

    if ca is None:
        ca = CertPaths(directory / "ca.crt", directory / "ca.key", directory / "ca.crt", directory / "ca.key")
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(ca.ca_key), "-out", str(ca.ca), "-days", "365", "-subj", "/CN=hcs-test-ca")
    key = directory / f"{name}.key"
    csr = directory / f"{name}.csr"
    cert = directory / f"{name}.crt"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={_san(hosts)}\nextendedKeyUsage={usage}\n")
    run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
        str(key), "-out", str(csr), "-subj", f"/CN={hosts[0]}")
    if not_after is None:
        run("x509", "-req", "-in", str(csr), "-CA", str(ca.ca), "-CAkey", str(ca.ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", str(days), "-extfile", str(ext))
    else:
        db = directory / f"{name}-ca"
        db.mkdir(exist_ok=True)
        (db / "index.txt").write_text("")
        (db / "serial").write_text("1000\n")
        conf = db / "ca.cnf"
        conf.write_text(f"[ca]\ndefault_ca=d\n[d]\ndatabase={db}/index.txt\nnew_certs_dir={db}\n"
                        f"serial={db}/serial\ndefault_md=sha256\npolicy=p\nunique_subject=no\n"
                        "[p]\ncommonName=supplied\n")
        run("ca", "-batch", "-config", str(conf), "-cert", str(ca.ca), "-keyfile", str(ca.ca_key), "-in", str(csr),
            "-out", str(cert), "-startdate", "20200101000000Z", "-enddate", not_after, "-extfile", str(ext),
            "-notext")
    return CertPaths(ca.ca, ca.ca_key, cert, key)
