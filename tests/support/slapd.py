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


def _config(folder: Path, admin_hash: str) -> str:
    return "\n".join([
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


def start_slapd(folder: Path, users: list[LdapUser], *, admin_password: str = "admin-secret") -> RunningSlapd:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "db").mkdir(exist_ok=True)
    conf = folder / "slapd.conf"
    conf.write_text(_config(folder, ssha(admin_password, folder)))
    ldif = folder / "data.ldif"
    ldif.write_text(_ldif(users, folder))
    subprocess.run([_binary("slapadd"), "-f", str(conf), "-l", str(ldif)], check=True, capture_output=True,
                   text=True)
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    server = start_server("slapd", [_binary("slapd"), "-f", str(conf), "-h", f"{url}/", "-d", "0"],
                          log_dir=folder / "logs", ready=lambda: port_open(port), timeout=30)
    return RunningSlapd(url, port, admin_password, server, folder)
