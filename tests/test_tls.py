"""Encryption in transit for the Ray backend (config.ps.ray_tls, pdist/tls.py): the certificates,
the checks of the config and of the process, and a local Ray instance that speaks only mutual TLS.

The run with TLS is a subprocess (this file run as a script): Ray reads its TLS variables once
per process, when it is imported, and this pytest process may have imported Ray already."""

import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading

import pytest

from pdist import tls
from pdist.registry import ConfigError

# Ray clusters: one xdist worker runs these files, one after another (make test: -n 2)
pytestmark = pytest.mark.xdist_group("ray")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- certificates --------------------------------------------------------------------------------

def _certificates(tmp_path, name: str) -> tls.Files:
  """A new CA and a certificate for 127.0.0.1 / localhost, in tmp_path/name."""
  (tmp_path / name).mkdir()
  return tls.write_certificates(str(tmp_path / name))


def _handshake(server: tls.Files, trust: str, client: tls.Files | None, timeout: float = 10.0):
  """None if a TLS client trusting `trust` and presenting `client`'s certificate exchanges a
  byte with a server on 127.0.0.1 that presents `server`'s certificate and requires a client
  certificate signed by its CA; else the client's error."""
  server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  server_ctx.load_cert_chain(server.cert, server.key)
  server_ctx.load_verify_locations(server.ca)
  server_ctx.verify_mode = ssl.CERT_REQUIRED
  client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # checks the name and the chain
  client_ctx.load_verify_locations(trust)
  if client is not None:
    client_ctx.load_cert_chain(client.cert, client.key)
  listener = socket.create_server(("127.0.0.1", 0))
  listener.settimeout(timeout)

  def serve():
    try:
      conn, _ = listener.accept()
      conn.settimeout(timeout)
      with server_ctx.wrap_socket(conn, server_side=True) as s:
        s.sendall(s.recv(1))
    except OSError:   # the failed handshakes: the client reports them
      pass

  thread = threading.Thread(target=serve, daemon=True)
  thread.start()
  try:
    with socket.create_connection(listener.getsockname(), timeout=timeout) as raw:
      with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(b"x")
        if s.recv(1) != b"x":
          return "closed"
    return None
  except OSError as e:   # ssl.SSLError is an OSError
    return f"{type(e).__name__}: {e}"
  finally:
    thread.join(timeout)
    listener.close()


def test_certificates_verify_against_their_own_ca_only(tmp_path):
  from cryptography import x509
  from cryptography.x509 import verification
  import ipaddress

  mine = _certificates(tmp_path, "mine")
  other = _certificates(tmp_path, "other")
  assert stat.S_IMODE(os.stat(mine.key).st_mode) == 0o600
  assert not os.path.exists(os.path.join(os.path.dirname(mine.ca), "ca.key"))  # never written

  def load(path):
    with open(path, "rb") as f:
      return x509.load_pem_x509_certificate(f.read())

  ca, cert, foreign = load(mine.ca), load(mine.cert), load(other.cert)
  store = verification.Store([ca])
  for name in (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")):
    verifier = verification.PolicyBuilder().store(store).build_server_verifier(name)
    assert verifier.verify(cert, [])[-1] == ca
    with pytest.raises(verification.VerificationError):
      verifier.verify(foreign, [])
  client = verification.PolicyBuilder().store(store).build_client_verifier()
  assert client.verify(cert, []).chain[-1] == ca   # Ray presents it as a client certificate too
  with pytest.raises(verification.VerificationError):
    client.verify(foreign, [])
  with pytest.raises(verification.VerificationError):   # not for another host
    verification.PolicyBuilder().store(store).build_server_verifier(
        x509.DNSName("example.com")).verify(cert, [])
  validity = cert.not_valid_after_utc - cert.not_valid_before_utc
  assert validity <= tls.AUTO_VALIDITY + tls._SKEW

  # the same files in a TLS handshake on loopback, both ends checked
  assert _handshake(mine, mine.ca, mine) is None
  assert "CERTIFICATE_VERIFY_FAILED" in _handshake(mine, other.ca, mine)   # server not trusted
  assert _handshake(mine, mine.ca, other) is not None    # client certificate from another CA
  assert _handshake(mine, mine.ca, None) is not None     # no client certificate


def test_auto_makes_a_private_directory_and_removes_it(monkeypatch):
  monkeypatch.delitem(sys.modules, "ray", raising=False)   # as before Ray is imported
  for k in tls.ENV:
    monkeypatch.delenv(k, raising=False)
  run = tls.RayTLS("auto")
  files = run.enable()
  try:
    assert stat.S_IMODE(os.stat(run.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    assert os.environ["RAY_USE_TLS"] == "1" and os.environ["RAY_TLS_CA_CERT"] == files.ca
    assert os.environ["RAY_TLS_SERVER_CERT"] == files.cert
  finally:
    directory = run.directory
    run.disable()
  assert not os.path.exists(directory)
  assert not any(k in os.environ for k in tls.ENV)


def _tiny(**ps_fields):
  """experiments/ps_ray.py:tiny with config.ps fields set (not validated)."""
  from conftest import quiet_experiment
  c = quiet_experiment("ps_ray", "tiny")
  c.ps.update(ps_fields)
  return c


def test_ray_tls_config_errors(tmp_path):
  from pdist import config as config_lib
  good = _certificates(tmp_path, "good")
  other = _certificates(tmp_path, "other")
  files = dict(ray_tls="files", ray_tls_cert=good.cert, ray_tls_key=good.key, ray_tls_ca=good.ca)
  missing = str(tmp_path / "missing.pem")
  (tmp_path / "named").mkdir()
  named = tls.write_certificates(str(tmp_path / "named"), hosts=("localhost",))
  cases = [
      (dict(ray_tls="on"), "config.ps.ray_tls='on' is not one of: off, auto, files"),
      (dict(ray_tls="files", ray_tls_cert=good.cert, ray_tls_key=good.key),
       "config.ps.ray_tls='files' needs config.ps.ray_tls_ca"),
      (dict(files, ray_tls_key=missing),
       f"config.ps.ray_tls_key='{missing}' cannot be read: No such file or directory"),
      (dict(files, ray_tls_ca=str(tmp_path)), f"config.ps.ray_tls_ca='{tmp_path}' cannot be read"),
      (dict(files, ray_tls_cert=good.key),
       f"config.ps.ray_tls_cert='{good.key}' does not hold PEM certificates"),
      (dict(files, ray_tls_key=other.key),
       f"config.ps.ray_tls_key='{other.key}' is not the private key of config.ps.ray_tls_cert"),
      (dict(files, ray_tls_cert=other.cert, ray_tls_key=other.key),
       f"config.ps.ray_tls_cert='{other.cert}' is not signed by config.ps.ray_tls_ca"),
      (dict(ray_tls="files", ray_tls_cert=named.cert, ray_tls_key=named.key, ray_tls_ca=named.ca),
       f"config.ps.ray_tls_cert='{named.cert}' does not name 127.0.0.1"),
      (dict(ray_tls="auto", ray_tls_ca=good.ca),
       "config.ps.ray_tls_ca only applies to config.ps.ray_tls='files'"),
      (dict(ray_tls="auto", ray_address="127.0.0.1:6379"),
       "config.ps.ray_tls='auto' makes certificates for the local Ray instance"),
  ]
  for fields, message in cases:
    with pytest.raises(ConfigError) as e:
      config_lib.validate(_tiny(**fields))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
  config_lib.validate(_tiny(**files))   # usable files pass


def test_ray_tls_on_the_command_line(tmp_path, capsys):
  from conftest import assert_one_clear_line
  assert_one_clear_line("mnist1d.py:tiny", ["--config.strategy=ps", "--config.ps.ray_tls=auto"],
                        "config.ps.ray_tls only applies to config.ps.backend='ray'",
                        tmp_path / "w", capsys)
  assert_one_clear_line("ps_ray.py:tiny", [f"--config.ps.ray_tls_cert={tmp_path}/none.pem",
                                           "--config.ps.ray_tls=files"],
                        "none.pem' cannot be read: No such file or directory", tmp_path / "w2",
                        capsys)


def test_a_process_keeps_the_tls_ray_was_imported_with(monkeypatch, tmp_path):
  """Ray reads its TLS variables once per process: a run that would need others is refused in
  one sentence before anything starts (instead of ray.init waiting minutes for a GCS it cannot
  speak to), and "auto" after "auto" makes its certificates anew at the same paths."""
  monkeypatch.setitem(sys.modules, "ray", sys.modules.get("ray", object()))
  for k in tls.ENV:
    monkeypatch.delenv(k, raising=False)
  monkeypatch.setattr(tls, "_imported_with", {k: None for k in tls.ENV})   # imported, TLS off
  tls.RayTLS("off").check()
  with pytest.raises(ConfigError, match=r"config.ps.ray_tls='auto' cannot run in this process: "
                                        r"Ray was imported here with TLS off"):
    tls.RayTLS("auto").check()

  first = _certificates(tmp_path, "a")
  monkeypatch.setattr(tls, "_imported_with", first.environment())         # imported, TLS on
  with pytest.raises(ConfigError, match="with TLS on, and Ray reads RAY_USE_TLS"):
    tls.RayTLS("off").check()
  tls.RayTLS("files", first.cert, first.key, first.ca).check()     # the same files: fine
  second = _certificates(tmp_path, "b")
  with pytest.raises(ConfigError, match="with TLS on and other certificates"):
    tls.RayTLS("files", second.cert, second.key, second.ca).check()
  with pytest.raises(ConfigError, match="with TLS on and other certificates"):
    tls.RayTLS("auto").check()   # not an "auto" directory of this process

  run = tls.RayTLS("auto")   # an earlier "auto" run of this process: its paths, new certificates
  monkeypatch.setattr(tls, "_imported_with", {k: None for k in tls.ENV})
  monkeypatch.delitem(sys.modules, "ray")
  files = run.enable()
  monkeypatch.setattr(tls, "_imported_with", files.environment())
  monkeypatch.setitem(sys.modules, "ray", object())
  with open(files.ca, "rb") as f:
    ca = f.read()
  directory = run.directory
  run.disable()
  again = tls.RayTLS("auto")
  assert again.enable() == files and again.directory == directory
  with open(files.ca, "rb") as f:
    assert f.read() != ca
  again.disable()
  assert not os.path.exists(directory)


class _FakeGrpcServer:
  """A server on 127.0.0.1 that answers an HTTP/2 greeting with a SETTINGS frame, as gRPC does:
  plain, or (`files`) over TLS requiring a client certificate of files' CA."""

  def __init__(self, files: tls.Files | None = None):
    self.context = None
    if files is not None:
      self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
      self.context.load_cert_chain(files.cert, files.key)
      self.context.load_verify_locations(files.ca)
      self.context.verify_mode = ssl.CERT_REQUIRED
      self.context.set_alpn_protocols(["h2"])
    self.listener = socket.create_server(("127.0.0.1", 0))
    self.listener.settimeout(0.2)
    self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._serve, daemon=True)
    self._thread.start()

  def _serve(self):
    while not self._stop.is_set():
      try:
        conn, _ = self.listener.accept()
      except OSError:   # the accept timeout: look at the stop flag again
        continue
      try:
        conn.settimeout(5)
        sock = conn if self.context is None else self.context.wrap_socket(conn, server_side=True)
        with sock:
          if len(sock.recv(64)) >= 24:
            sock.sendall(bytes.fromhex("000000040000000000"))
      except OSError:
        conn.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join(5)
    self.listener.close()


def test_a_cluster_of_other_tls_is_refused_in_one_sentence(tmp_path, monkeypatch):
  """With config.ps.ray_address, a cluster that does not speak the run's gRPC (plain or TLS of
  these certificates) is refused at once: Ray's client would retry it for minutes."""
  for k in tls.ENV:
    monkeypatch.delenv(k, raising=False)
  mine, other = _certificates(tmp_path, "mine"), _certificates(tmp_path, "other")
  given = lambda f: tls.RayTLS("files", f.cert, f.key, f.ca)  # noqa: E731
  with _FakeGrpcServer() as plain:
    tls.RayTLS("off").check_cluster(plain.address)
    with pytest.raises(ConfigError, match="does not answer gRPC over TLS with the certificate"):
      given(mine).check_cluster(plain.address)
  with _FakeGrpcServer(mine) as secure:
    given(mine).check_cluster(secure.address)
    with pytest.raises(ConfigError, match=r"does not answer gRPC without TLS; a cluster started "
                                          r"with RAY_USE_TLS=1 needs its certificates"):
      tls.RayTLS("off").check_cluster(secure.address)
    with pytest.raises(ConfigError, match="a cluster without TLS, one of another CA"):
      given(other).check_cluster(secure.address)
    for k, v in mine.environment().items():   # Ray's variables exported by the user
      monkeypatch.setenv(k, v)
    tls.RayTLS("off").check_cluster(secure.address)


# -- a local Ray instance with TLS -----------------------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + SETTINGS


def speaks_http2(port: int, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> bool:
  """Whether the server on 127.0.0.1:port answers an HTTP/2 client's preface with its SETTINGS
  frame, as a gRPC server does: over plain TCP (`context` None: what an insecure gRPC client
  sends) or over TLS made with `context`."""
  try:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
      sock = raw if context is None else context.wrap_socket(raw, server_hostname="127.0.0.1")
      with sock:
        sock.sendall(_PREFACE)
        head = b""
        while len(head) < 9:
          more = sock.recv(9 - len(head))
          if not more:
            break
          head += more
        return len(head) == 9 and head[3] == 0x04
  except OSError:
    return False


def _client(trust: str, files: tls.Files | None) -> ssl.SSLContext:
  ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
  ctx.load_verify_locations(trust)
  if files is not None:
    ctx.load_cert_chain(files.cert, files.key)
  ctx.set_alpn_protocols(["h2"])
  return ctx


def _ray_ports() -> dict:
  """{port: kind} of every socket this process and its descendants listen on: "gcs_server",
  "raylet" (node manager, object manager), "worker" (a Ray worker's core-worker server),
  "driver" (this process's), else the process's name."""
  import psutil
  out = {}
  me = psutil.Process()
  for p in [me] + me.children(recursive=True):
    try:
      exe = (p.cmdline() or [""])[0]
      kind = ("driver" if p.pid == me.pid else "gcs_server" if exe.endswith("gcs_server")
              else "raylet" if exe.endswith("raylet")
              else "worker" if p.name().startswith("ray::") and "Agent" not in p.name()
              else p.name())
      listening = [c.laddr.port for c in p.net_connections(kind="inet")
                   if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
      continue
    out.update({port: kind for port in listening})
  return out


def _child(out_path: str) -> None:
  """The run with TLS, in a fresh process; writes what it saw to `out_path` (JSON)."""
  import jax
  from pdist import config as config_lib, data, strategies, tasks, train

  def config(steps):
    c = config_lib.load(os.path.join(ROOT, "experiments", "ps_ray.py") + ":tiny,tls",
                        ["--config.train.progress=False", "--config.train.tensorboard=False",
                         "--config.optim.momentum=0.9", "--config.data.batch_size=16",
                         f"--config.train.steps={steps}", "--config.train.log_every=10",
                         "--config.train.eval_every=0", "--config.train.save_params=False"])
    return c

  c = config(40)
  task = tasks.build(c, data.load(c.data))
  strategy = strategies.build(c, task)
  seen = {}
  try:
    state = strategy.init(jax.random.PRNGKey(c.train.seed))
    state, first = strategy.run(state, 20)
    files, directory = strategy._tls.files, strategy._tls.directory
    seen["startup_seconds"] = strategy.startup_seconds
    seen["modes"] = {"dir": oct(stat.S_IMODE(os.stat(directory).st_mode)),
                     "key": oct(stat.S_IMODE(os.stat(files.key).st_mode))}
    import ray
    gcs = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    other_dir = os.path.join(directory, "other")
    os.mkdir(other_dir, 0o700)
    other = tls.write_certificates(other_dir)   # a certificate from another CA
    ports = _ray_ports()
    seen["ports"] = {}
    for port, kind in sorted(ports.items()):
      seen["ports"][str(port)] = {
          "kind": kind, "gcs": port == gcs,
          "mutual_tls": speaks_http2(port, _client(files.ca, files)),
          "plain": speaks_http2(port),
          "tls_without_client_certificate": speaks_http2(port, _client(files.ca, None)),
          "tls_with_another_ca_certificate": speaks_http2(port, _client(files.ca, other)),
      }
    state, second = strategy.run(state, 20)
    seen["rows"] = [first, second]
  finally:
    strategy.close()
  seen["after_close"] = {"directory_exists": os.path.exists(directory),
                         "env": {k: os.environ.get(k) for k in tls.ENV}}
  # a second run of the process (a sweep's next variant): the same paths, new certificates
  result = train.run(config(20))
  seen["second_run"] = {"updates": result.summary["updates"],
                        "ray_tls": result.summary.get("ray_tls"),
                        "startup_seconds": result.summary.get("ray_startup_seconds")}
  c = config(20)   # and one without TLS is refused before it starts anything: this process's
  c.ps.ray_tls = "off"   # Ray keeps TLS
  strategy = strategies.build(c, task)
  try:
    strategy.start()
    seen["off_after_tls"] = "accepted"
  except ConfigError as e:
    seen["off_after_tls"] = str(e)
  finally:
    strategy.close()
  with open(out_path, "w") as f:
    json.dump(seen, f, indent=1, default=float)


@pytest.mark.slow
def test_a_tls_cluster_trains_and_refuses_clients_without_the_certificate(tmp_path):
  out = tmp_path / "seen.json"
  env = {k: v for k, v in os.environ.items() if k not in tls.ENV}
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + env.get("PYTHONPATH", "").split(os.pathsep))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  seen = json.loads(out.read_text())
  first, second = seen["rows"]
  assert second["updates"] == 40 and second["loss"] < first["loss"]   # it trained
  assert seen["modes"] == {"dir": "0o700", "key": "0o600"}
  ports = seen["ports"].values()
  kinds = {p["kind"] for p in ports}
  assert {"gcs_server", "raylet", "worker", "driver"} <= kinds, seen["ports"]
  assert any(p["gcs"] and p["kind"] == "gcs_server" for p in ports)
  for p in ports:
    assert not p["plain"], p   # nothing in the process tree speaks plain gRPC (HTTP/2)
    if p["kind"] in ("gcs_server", "raylet", "worker", "driver"):   # every gRPC server of Ray
      assert p["mutual_tls"], p                                     # speaks TLS with the run's
      assert not p["tls_without_client_certificate"], p             # certificate, and nothing
      assert not p["tls_with_another_ca_certificate"], p            # to a client without it
  assert seen["after_close"] == {"directory_exists": False, "env": {k: None for k in tls.ENV}}
  assert seen["second_run"]["updates"] == 20 and seen["second_run"]["ray_tls"] == "auto"
  assert "config.ps.ray_tls='off' cannot run in this process" in seen["off_after_tls"]


if __name__ == "__main__":   # the subprocess of the test above
  _child(sys.argv[1])
