"""Encryption in transit for the Ray backend: certificates, and Ray's TLS switched on.

Ray (2.60) runs its gRPC — the GCS, each raylet's node manager and object manager, every
worker's and the driver's core-worker server, so also every object sent between machines — with
mutual TLS when its processes find

  RAY_USE_TLS=1, RAY_TLS_SERVER_CERT (PEM chain), RAY_TLS_SERVER_KEY (PEM key), RAY_TLS_CA_CERT

in their environment when they start (the C++ RayConfig reads them; Ray's Python gRPC code,
grpc_utils and tls_utils, too, where grpcio is installed). Every server then requires a client
certificate signed by that CA, and a node's processes present their one certificate at both
ends (so it must name the node's address). A client without it gets no answer. Not covered:
the raylet's and object store's Unix sockets and shared memory (one machine; file permissions),
pdist's own shared rows (/dev/shm, mode 0600), and two HTTP servers Ray starts on the node
address that carry no parameters (the runtime-env agent; the autoscaler monitor's metrics).

`config.ps.ray_tls`:
  "off"    plain gRPC (Ray's default);
  "auto"   a private CA and one certificate for 127.0.0.1 / localhost made at start (EC P-256,
           valid for `AUTO_VALIDITY`), written into a fresh directory of mode 0700 (key 0600),
           removed when the run closes; the CA's private key is never written, so nothing else
           can be issued under it. Only for the local instance a run starts itself;
  "files"  config.ps.ray_tls_cert / ray_tls_key / ray_tls_ca: a cluster's own certificates (the
           same variables must be in the environment of every `ray start`, and the certificate
           must name, as a subjectAltName IP or DNS entry, the address each node is reached at:
           gRPC checks it; for the local instance, 127.0.0.1).

This module needs `cryptography` only for "auto" and the checks of "files"; it imports no JAX.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import shutil
import sys
import tempfile

from pdist.errors import TrainingError
from pdist.registry import ConfigError

MODES = ("off", "auto", "files")
ENV = ("RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")
AUTO_VALIDITY = datetime.timedelta(days=1)   # how long "auto"'s certificates are valid
_SKEW = datetime.timedelta(minutes=5)         # they start this much before now (clocks differ)


@dataclasses.dataclass(frozen=True)
class Files:
  """PEM files: the node's certificate (chain), its private key, the CA's certificate."""
  cert: str
  key: str
  ca: str

  def environment(self) -> dict[str, str]:
    """The variables Ray's processes read to run their gRPC with mutual TLS."""
    return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": self.cert, "RAY_TLS_SERVER_KEY": self.key,
            "RAY_TLS_CA_CERT": self.ca}


# -- making certificates --------------------------------------------------------------------------

def _new_key():
  from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
  return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str):
  from cryptography import x509  # noqa: PLC0415
  from cryptography.x509.oid import NameOID  # noqa: PLC0415
  return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pdist"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts):
  """Subject alternative names: IP addresses as IP entries, other names as DNS entries."""
  from cryptography import x509  # noqa: PLC0415
  out = []
  for h in hosts:
    try:
      out.append(x509.IPAddress(ipaddress.ip_address(h)))
    except ValueError:
      out.append(x509.DNSName(h))
  return x509.SubjectAlternativeName(out)


def make_ca(validity: datetime.timedelta = AUTO_VALIDITY, name: str = "pdist run CA"):
  """(private key, certificate) of a new self-signed CA that may sign end-entity certificates
  only (path length 0)."""
  from cryptography import x509  # noqa: PLC0415
  from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
  key = _new_key()
  now = datetime.datetime.now(datetime.timezone.utc)
  subject = _name(name)
  cert = (x509.CertificateBuilder()
          .subject_name(subject).issuer_name(subject)
          .public_key(key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - _SKEW).not_valid_after(now + validity)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
              encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                         critical=False)
          .sign(key, hashes.SHA256()))
  return key, cert


def issue(ca_key, ca_cert, hosts=("127.0.0.1", "localhost"),
          validity: datetime.timedelta = AUTO_VALIDITY):
  """(private key, certificate) for `hosts`, signed by the CA, usable as both a TLS server and a
  TLS client certificate (Ray's processes present the same one at both ends)."""
  from cryptography import x509  # noqa: PLC0415
  from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
  from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415
  key = _new_key()
  now = datetime.datetime.now(datetime.timezone.utc)
  not_after = min(now + validity, ca_cert.not_valid_after_utc)
  cert = (x509.CertificateBuilder()
          .subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
          .public_key(key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - _SKEW).not_valid_after(not_after)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
              encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
          .add_extension(_san(hosts), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
  return key, cert


def _write(path: str, data: bytes, mode: int) -> None:
  """A new file (never an existing one, nor a link's target) created with `mode`: a key is
  never readable by others, not even for an instant."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
  with os.fdopen(fd, "wb") as f:
    f.write(data)


def write_certificates(directory: str, hosts=("127.0.0.1", "localhost"),
                       validity: datetime.timedelta = AUTO_VALIDITY) -> Files:
  """A new CA and a certificate for `hosts` signed by it, as PEM files in `directory` (which
  must exist): ca.pem (certificate only), node.pem, node.key (mode 0600)."""
  from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
  ca_key, ca_cert = make_ca(validity)
  key, cert = issue(ca_key, ca_cert, hosts, validity)
  files = Files(cert=os.path.join(directory, "node.pem"), key=os.path.join(directory, "node.key"),
                ca=os.path.join(directory, "ca.pem"))
  pem = serialization.Encoding.PEM
  _write(files.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), 0o600)
  _write(files.cert, cert.public_bytes(pem), 0o644)
  _write(files.ca, ca_cert.public_bytes(pem), 0o644)
  return files


# -- checking given files -------------------------------------------------------------------------

def _read(ps, field: str) -> bytes:
  path = ps[field]
  if not path:
    raise ConfigError(f"config.ps.ray_tls='files' needs config.ps.{field} (a PEM file path)")
  try:
    with open(os.path.expanduser(path), "rb") as f:
      return f.read()
  except OSError as e:
    raise ConfigError(f"config.ps.{field}='{path}' cannot be read: "
                      f"{e.strerror or type(e).__name__}") from None


def _signed(cert, issuer) -> bool:
  from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
  try:
    cert.verify_directly_issued_by(issuer)
    return True
  except (ValueError, TypeError, InvalidSignature):
    return False


def _chains_to(chain: list, cas: list) -> bool:
  """Whether the certificates of `chain` (leaf first) each sign the one before, the last being
  one of `cas` or signed by one of them."""
  return (all(_signed(a, b) for a, b in zip(chain, chain[1:]))
          and any(chain[-1] == ca or _signed(chain[-1], ca) for ca in cas))


def _names(cert) -> set[str]:
  """The certificate's subjectAltName entries, IP addresses and DNS names, as strings."""
  from cryptography import x509  # noqa: PLC0415
  try:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
  except x509.ExtensionNotFound:
    return set()
  return ({str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
          | set(san.get_values_for_type(x509.DNSName)))


def validate(config) -> None:
  """config.ps.ray_tls and its files, before anything starts; each problem one sentence."""
  ps = config.ps
  mode = ps.get("ray_tls", "off")
  if mode not in MODES:
    raise ConfigError(f"config.ps.ray_tls='{mode}' is not one of: {', '.join(MODES)}")
  given = [f for f in ("ray_tls_cert", "ray_tls_key", "ray_tls_ca") if ps.get(f, "")]
  if mode != "files":
    if given:
      raise ConfigError(f"config.ps.{given[0]} only applies to config.ps.ray_tls='files'")
    if mode == "auto" and ps.ray_address:
      raise ConfigError("config.ps.ray_tls='auto' makes certificates for the local Ray instance "
                        "a run starts itself; a cluster at config.ps.ray_address has its own: "
                        "give them with config.ps.ray_tls='files' and config.ps.ray_tls_cert, "
                        "ray_tls_key and ray_tls_ca")
    return
  from cryptography import x509  # noqa: PLC0415
  from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
  loaded = {}
  for field, load in (("ray_tls_cert", x509.load_pem_x509_certificates),
                      ("ray_tls_ca", x509.load_pem_x509_certificates),
                      ("ray_tls_key", lambda b: serialization.load_pem_private_key(b, None))):
    data = _read(ps, field)
    try:
      loaded[field] = load(data)
    except (ValueError, TypeError) as e:
      what = "an unencrypted PEM private key" if field == "ray_tls_key" else "PEM certificates"
      raise ConfigError(f"config.ps.{field}='{ps[field]}' does not hold {what} "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
  cert = loaded["ray_tls_cert"][0]
  if cert.public_key().public_numbers() != loaded["ray_tls_key"].public_key().public_numbers():
    raise ConfigError(f"config.ps.ray_tls_key='{ps.ray_tls_key}' is not the private key of "
                      f"config.ps.ray_tls_cert='{ps.ray_tls_cert}'")
  if not _chains_to(loaded["ray_tls_cert"], loaded["ray_tls_ca"]):
    raise ConfigError(f"config.ps.ray_tls_cert='{ps.ray_tls_cert}' is not signed by "
                      f"config.ps.ray_tls_ca='{ps.ray_tls_ca}' (every Ray process presents the "
                      "certificate and accepts only those of that CA)")
  if not ps.ray_address and "127.0.0.1" not in _names(cert):
    raise ConfigError(f"config.ps.ray_tls_cert='{ps.ray_tls_cert}' does not name 127.0.0.1 (as "
                      "a subjectAltName IP or DNS entry), the address of the local Ray instance "
                      "a run without config.ps.ray_address starts: Ray's clients would refuse it")
  now = datetime.datetime.now(datetime.timezone.utc)
  if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
    raise ConfigError(f"config.ps.ray_tls_cert='{ps.ray_tls_cert}' is not valid now (valid "
                      f"from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                      f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")


# -- what a cluster speaks ------------------------------------------------------------------------

_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def speaks_grpc(host: str, port: int, files: Files | None = None, timeout: float = 5.0) -> bool:
  """Whether the server at host:port answers an HTTP/2 client's greeting (the preface and an
  empty SETTINGS frame) with its own SETTINGS frame, as every gRPC server does: over plain TCP
  (`files` None: what a client without TLS sends), or over TLS presenting `files`' certificate
  and checking the server's against its CA and `host`."""
  import socket  # noqa: PLC0415
  import ssl  # noqa: PLC0415
  try:
    with socket.create_connection((host, port), timeout=timeout) as raw:
      if files is None:
        sock = raw
      else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(files.ca)
        context.load_cert_chain(files.cert, files.key)
        context.set_alpn_protocols(["h2"])
        sock = context.wrap_socket(raw, server_hostname=host)
      with sock:
        sock.sendall(_HTTP2_PREFACE)
        head = b""
        while len(head) < 9:
          more = sock.recv(9 - len(head))
          if not more:
            break
          head += more
        return len(head) == 9 and head[3] == 0x04   # a frame header, type SETTINGS
  except OSError:   # refused, reset, timed out, or a failed TLS handshake (ssl.SSLError)
    return False


# -- switching Ray's TLS on for a run -------------------------------------------------------------
#
# Ray 2.60 reads RAY_USE_TLS and the three paths once per process: its C++ RayConfig singleton
# reads the RAY_* variables when it is built, which `import ray` does, and not again. With the
# variables set after `import ray` (tried here; also with ray.init(_system_config={"USE_TLS":
# True, "TLS_SERVER_CERT": ...})) this process's GCS client stays on plain gRPC while the local
# instance it starts, which inherits the variables, speaks TLS: ray.init waits for the GCS until
# it gives up ("Failed to get cluster ID from GCS server: TimedOut"), a minute or more later; the
# other way round likewise. So the variables must be in os.environ before the first
# `import ray`, and every later Ray run of the process must use the same ones: pdist imports Ray
# through `import_ray`, which notes them, and `RayTLS.check` refuses a run that would need others.

_imported_with: dict | None = None   # the Ray TLS variables at this process's `import ray`
_auto_directories: set = set()       # "auto" directories this process made (and removed)


def _current() -> dict:
  return {k: os.environ.get(k) for k in ENV}


def _effective(env: dict) -> tuple | None:
  """(cert, key, ca) of the TLS these variables switch on, None when they leave it off."""
  if (env.get("RAY_USE_TLS") or "0").lower() not in ("1", "true"):
    return None
  return tuple(env.get(k) for k in ENV[1:])


def _ray_frozen() -> tuple[bool, tuple | None]:
  """(whether `ray` is imported in this process, the TLS it was imported with)."""
  global _imported_with
  if "ray" not in sys.modules:
    return False, None
  if _imported_with is None:   # imported by someone else: assume the variables are unchanged
    _imported_with = _current()
  return True, _effective(_imported_with)


def import_ray():
  """`import ray`, noting the TLS variables it is imported with (see above; if something else
  imported it before, they are assumed unchanged since)."""
  global _imported_with
  if _imported_with is None:
    _imported_with = _current()
  import ray  # noqa: PLC0415
  return ray


class RayTLS:
  """Ray's TLS for the lifetime of one run: `enable()` makes or takes the certificates and puts
  Ray's variables into os.environ (before Ray is imported and ray.init starts the local
  instance, so the GCS, raylet and every worker process inherit them and this process's core
  worker reads them); `disable()` (after ray.shutdown) puts the environment back as it was and
  removes "auto"'s directory. `check()` refuses, before anything starts, a run whose TLS this
  process's Ray can no longer take."""

  def __init__(self, mode: str, cert: str = "", key: str = "", ca: str = ""):
    self.mode = mode
    self._given = Files(*(os.path.abspath(os.path.expanduser(p)) for p in (cert, key, ca))) \
        if mode == "files" else None
    self.files: Files | None = None
    self.directory: str | None = None
    self._saved: dict | None = None

  @classmethod
  def from_config(cls, ps) -> RayTLS:
    return cls(ps.get("ray_tls", "off"), ps.get("ray_tls_cert", ""), ps.get("ray_tls_key", ""),
               ps.get("ray_tls_ca", ""))

  @property
  def on(self) -> bool:
    return self.mode != "off"

  def _reused_directory(self, frozen) -> str | None:
    """"auto" after an earlier "auto" run of this process: that run's directory, made anew."""
    if self.mode != "auto" or frozen is None:
      return None
    directory = os.path.dirname(frozen[0])
    if directory in _auto_directories and all(os.path.dirname(p) == directory for p in frozen):
      return directory
    return None

  def check_cluster(self, address: str) -> None:
    """Refuses, in one sentence, a cluster at HOST:PORT (reachable) that does not speak this
    run's gRPC: Ray's own client would retry it for minutes."""
    if self.mode == "files":
      files = self._given
    else:   # "off": TLS only if Ray's variables are exported
      effective = _effective(_current())
      files = Files(*effective) if effective else None
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if speaks_grpc(host, int(port), files):
      return
    if files is None:
      raise ConfigError(f"config.ps.ray_address='{address}' does not answer gRPC without TLS; "
                        "a cluster started with RAY_USE_TLS=1 needs its certificates: "
                        "config.ps.ray_tls='files' and config.ps.ray_tls_cert, ray_tls_key and "
                        "ray_tls_ca")
    raise ConfigError(f"config.ps.ray_address='{address}' does not answer gRPC over TLS with "
                      f"the certificate '{files.cert}' (a cluster without TLS, one of another "
                      f"CA, or a certificate that does not name {host})")

  def check(self) -> None:
    imported, frozen = _ray_frozen()
    if not imported:
      return
    if self.mode == "off":
      wanted = _effective(_current())
    elif self.mode == "files":
      wanted = (self._given.cert, self._given.key, self._given.ca)
    else:
      wanted = frozen if self._reused_directory(frozen) else "new"
    if wanted == frozen:
      return
    was = "on" if frozen else "off"
    raise ConfigError(
        f"config.ps.ray_tls='{self.mode}' cannot run in this process: Ray was imported here "
        f"with TLS {was}{' and other certificates' if frozen and wanted else ''}, and Ray reads "
        "RAY_USE_TLS and RAY_TLS_* once per process (at `import ray`); run it in a new process")

  def enable(self) -> Files | None:
    if self.files is not None:
      return self.files
    self.check()
    if not self.on:
      return None
    if self.mode == "auto":
      _, frozen = _ray_frozen()
      reuse = self._reused_directory(frozen)
      try:
        if reuse:   # fails if anything took the name since: nothing there is followed or read
          os.mkdir(reuse, 0o700)
          self.directory = reuse
        else:
          self.directory = tempfile.mkdtemp(prefix="pdist-ray-tls-")   # mode 0700
        _auto_directories.add(self.directory)
        self.files = write_certificates(self.directory)
      except OSError as e:
        self.disable()
        raise TrainingError(f"config.ps.ray_tls='auto' could not write its certificates into "
                            f"{reuse or tempfile.gettempdir()}: {e.strerror or e}") from None
      except BaseException:
        self.disable()
        raise
    else:
      self.files = self._given
    self._saved = _current()
    os.environ.update(self.files.environment())
    return self.files

  def disable(self) -> None:
    if self._saved is not None:
      for k, v in self._saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
      self._saved = None
    if self.directory is not None:
      shutil.rmtree(self.directory, ignore_errors=True)
      self.directory = None
    self.files = None
