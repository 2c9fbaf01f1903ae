"""DICOM over TLS (PS3.15 secure transport) for probes that support it.

A second listener beside the plain one, with the same AE title, allow-list and handlers,
using the kit's own HTTPS certificate: a probe trusts `tls/ca.pem` as tablets do. TLS 1.2
(AEAD suites only) or newer. Off unless `dicom.tls_port` is set.
"""

from __future__ import annotations

import ssl

from .dimse import listen


class _HandshakeInAssociationThread(ssl.SSLContext):
    """pynetdicom wraps an accepted socket in its one accept thread, and a blocking handshake
    there lets a connection that sends nothing stop every other probe. Deferred, the
    handshake runs in the connection's own thread, under the associate deadline
    (dimse_server)."""

    def wrap_socket(self, sock, *args, **kwargs):
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_context(data_dir, secrets=None) -> ssl.SSLContext:
    """`secrets`: the data key's SecretBox, which opens a sealed server key."""
    from ..security.tls import SERVER_CERT, TLS_DIR, harden_tls, server_key_path

    ctx = harden_tls(_HandshakeInAssociationThread(ssl.PROTOCOL_TLS_SERVER))
    with server_key_path(data_dir, secrets) as key:
        ctx.load_cert_chain(str(data_dir / TLS_DIR / SERVER_CERT), key)
    return ctx


_contexts: dict[str, ssl.SSLContext] = {}  # data dir -> the context made while the key was held


def _context_for(kit) -> ssl.SSLContext:
    """A kit locked after it started (the data key dropped) keeps answering probes over TLS
    ("locked") with the context made while it held the key, which opens a sealed server key."""
    where = str(kit.data_dir)
    if not kit.locked or where not in _contexts:
        _contexts[where] = server_context(kit.data_dir, None if kit.locked else kit.store.secrets)
    return _contexts[where]


def start(kit):
    """Start the TLS receiver on dicom.bind:dicom.tls_port; nothing when the port is -1."""
    port = int(kit.config["dicom.tls_port"])
    if port < 0:
        return _Off()
    return listen(kit, port or (kit.dicom_tls_port or 0), "dicom.tls_port", ssl_context=_context_for(kit))


start_locked = start  # `listen` answers "locked" while kit.locked


class _Off:
    def stop(self) -> None:
        pass
