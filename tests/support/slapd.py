"""A real OpenLDAP slapd for tests: its own config folder (slapd.conf generated here), database loaded with
`slapadd`, `{SSHA}` passwords from `slappasswd`, listening on 127.0.0.1:<free port>, stopped by its PID.

Debian: `apt-get install -y slapd ldap-utils` (scripts/bootstrap.sh --test lists them). The system daemon is never
used: everything lives under the folder handed to `start_slapd`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import Server, free_port, port_open, start_server

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")


@dataclass
class LdapUser:
    uid: str
    password: str
    groups: list[str] = field(default_factory=list)
    mail: str = ""

    @property
    def dn(self) -> str:
        return f"uid={self.uid},ou=people,{SUFFIX}"


@dataclass
class RunningSlapd:
    url: str
    port: int
    admin_password: str
    server: Server
    folder: Path
    ldaps_url: str = ""
    ca_file: Path | None = None

    def stop(self) -> None:
        self.server.stop()


def _binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError(f"{name} not found: apt-get install -y slapd ldap-utils")


def ssha(password: str, folder: Path) -> str:
    """`slappasswd` hash; the password goes through a 0600 file, never argv."""
    secret = folder / ".pw"
    secret.write_text(password)
    secret.chmod(0o600)
    try:
        out = subprocess.run([_binary("slappasswd"), "-h", "{SSHA}", "-T", str(secret)], check=True,
                             capture_output=True, text=True)
    finally:
        secret.unlink()
    return out.stdout.strip()


def _ldif(users: list[LdapUser], folder: Path) -> str:
    groups: dict[str, list[str]] = {}
    for u in users:
        for g in u.groups:
            groups.setdefault(g, []).append(u.dn)
    parts = [
        f"dn: {SUFFIX}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
    ]
    for u in users:
        entry = (f"dn: {u.dn}\nobjectClass: inetOrgPerson\nuid: {u.uid}\ncn: {u.uid}\nsn: {u.uid}\n"
                 f"userPassword: {ssha(u.password, folder)}\n")
        if u.mail:
            entry += f"mail: {u.mail}\n"
        for g in u.groups:
            entry += f"memberOf: cn={g},ou=groups,{SUFFIX}\n"
        parts.append(entry)
    for g, members in groups.items():
        parts.append(f"dn: cn={g},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {g}\n"
                     + "".join(f"member: {m}\n" for m in members))
    return "\n".join(parts)


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (ca.pem, server.pem, server.key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmsb test LDAP CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def _config(folder: Path, admin_hash: str, tls: tuple[Path, Path, Path] | None = None) -> str:
    tls_lines = [f"TLSCACertificateFile {tls[0]}", f"TLSCertificateFile {tls[1]}",
                 f"TLSCertificateKeyFile {tls[2]}"] if tls else []
    return "\n".join([
        *tls_lines,
        *(f"include {SCHEMA / s}.schema" for s in ("core", "cosine", "inetorgperson", "nis")),
        f"pidfile {folder / 'slapd.pid'}",
        f"argsfile {folder / 'slapd.args'}",
        f"modulepath {MODULES}",
        "moduleload back_mdb",
        "moduleload memberof",
        "loglevel stats",
        # Permissive on purpose: this server *accepts* unauthenticated binds (DN + empty password), so the tests
        # prove that the broker refuses empty passwords itself.
        "allow bind_anon_cred",
        "database mdb",
        f'suffix "{SUFFIX}"',
        f'rootdn "{ADMIN_DN}"',
        f"rootpw {admin_hash}",
        f"directory {folder / 'db'}",
        "maxsize 104857600",
        "overlay memberof",
        "memberof-group-oc groupOfNames",
        "memberof-member-ad member",
        "memberof-memberof-ad memberOf",
        "access to attrs=userPassword by self write by anonymous auth by * none",
        "access to * by users read by * none",
        "",
    ])


def start_slapd(folder: Path, users: list[LdapUser], *, admin_password: str = "admin-secret",
                tls: bool = False) -> RunningSlapd:
    """slapd on ldap://127.0.0.1:<port> (StartTLS-capable when `tls`), plus ldaps://127.0.0.1:<port2> when `tls`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "db").mkdir(exist_ok=True)
    conf = folder / "slapd.conf"
    tls_files = make_tls_files(folder) if tls else None
    conf.write_text(_config(folder, ssha(admin_password, folder), tls_files))
    ldif = folder / "data.ldif"
    ldif.write_text(_ldif(users, folder))
    subprocess.run([_binary("slapadd"), "-f", str(conf), "-l", str(ldif)], check=True, capture_output=True,
                   text=True)
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    listen = f"{url}/"
    ldaps_url, ldaps_port = "", 0
    if tls_files:
        ldaps_port = free_port()
        ldaps_url = f"ldaps://127.0.0.1:{ldaps_port}"
        listen += f" {ldaps_url}/"
    server = start_server("slapd", [_binary("slapd"), "-f", str(conf), "-h", listen, "-d", "0"],
                          log_dir=folder / "logs", timeout=30,
                          ready=lambda: port_open(port) and (not ldaps_port or port_open(ldaps_port)))
    return RunningSlapd(url, port, admin_password, server, folder, ldaps_url, tls_files[0] if tls_files else None)
