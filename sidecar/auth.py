"""Shared secret for TCP mode: a CURVE key pair for the server and one for its clients, in one 0600 file.

Why CURVE and not an HMAC token: the handshake happens inside libzmq before any message reaches the
server's code, so a peer without the secret never gets a single byte parsed or answered; the traffic is
encrypted and replay-protected; and the ZAP check is one short callback. An HMAC header would still let
unauthenticated bytes reach the JSON parser and would leave sequences readable on the wire.

Anyone holding the file can act as server or client; the server admits only the file's client key.
"""

import json
import os
from pathlib import Path

import zmq

from . import safe_files

WHAT = "secret file"


class SecretError(Exception):
    """The secret file is missing, malformed, too open or not this user's (one-line message)."""


def create(path):
    """Write a fresh secret file (mode 0600, atomic) and return its keys."""
    _, server_secret = zmq.curve_keypair()
    _, client_secret = zmq.curve_keypair()
    body = {"mechanism": "curve", "server_secret_key": server_secret.decode("ascii"),
            "client_secret_key": client_secret.decode("ascii")}
    safe_files.replace_text(path, json.dumps(body) + "\n", WHAT)
    return load(path)


def load(path):
    """Read a secret file (this user's, mode 0600, not a link); returns a dict of z85 (bytes) keys:
    server_secret/public, client_secret/public."""
    path = Path(path)
    try:
        body = json.loads(safe_files.read_text(path, WHAT, forbidden=safe_files.PRIVATE))
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"secret file {path} is not readable by this user") from None
    except ValueError:
        raise SecretError(f"secret file {path} is not a sidecar secret file (not JSON)") from None
    except safe_files.UnsafePath as exc:
        raise SecretError(str(exc)) from None
    try:
        if body.get("mechanism") != "curve":
            raise ValueError
        keys = {}
        for role in ("server", "client"):
            secret = body[f"{role}_secret_key"].encode("ascii")
            keys[f"{role}_secret"] = secret
            keys[f"{role}_public"] = zmq.curve_public(secret)
    except (AttributeError, KeyError, ValueError, TypeError, zmq.ZMQError):
        raise SecretError(f"secret file {path} is not a valid sidecar secret file") from None
    return keys


def load_or_create(path):
    return load(path) if os.path.lexists(path) else create(path)


def setup_server(context, sock, keys):
    """Make `sock` a CURVE server that admits only the client key of `keys`; returns the running ZAP
    authenticator (stop it at shutdown)."""
    from zmq.auth.thread import ThreadAuthenticator

    allowed = keys["client_public"]

    class _OnlyOurClient:
        def callback(self, domain, client_key):
            return client_key == allowed

    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=_OnlyOurClient())
    sock.curve_secretkey = keys["server_secret"]
    sock.curve_publickey = keys["server_public"]
    sock.curve_server = True
    return authenticator


def setup_client(sock, keys):
    sock.curve_secretkey = keys["client_secret"]
    sock.curve_publickey = keys["client_public"]
    sock.curve_serverkey = keys["server_public"]
