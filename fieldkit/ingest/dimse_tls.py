"""DICOM over TLS (PS3.15 secure transport) for probes that support it.

A second listener beside the plain one, with the same AE title, allow-list and handlers,
using the kit's own HTTPS certificate: a probe trusts `tls/ca.pem` as tablets do. TLS 1.2
or newer only. Off unless `dicom.tls_port` is set.
"""

from __future__ import annotations

import logging
import ssl

from pynetdicom import evt

from ..errors import ConfigError
from .dimse import Receiver, handle_echo, handle_store, make_ae

log = logging.getLogger(__name__)


def server_context(data_dir) -> ssl.SSLContext:
    from ..security.tls import SERVER_CERT, SERVER_KEY, TLS_DIR

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    tls = data_dir / TLS_DIR
    ctx.load_cert_chain(str(tls / SERVER_CERT), str(tls / SERVER_KEY))
    return ctx


def start(kit):
    """Start the TLS receiver on dicom.bind:dicom.tls_port; nothing when the port is -1."""
    config = kit.config
    port = int(config["dicom.tls_port"])
    if port < 0:
        kit.dicom_tls_port = None
        return _Off()
    ae = make_ae(config)
    handlers = [(evt.EVT_C_STORE, handle_store, [kit]), (evt.EVT_C_ECHO, handle_echo)]
    try:
        server = ae.start_server((config["dicom.bind"], port), block=False, evt_handlers=handlers,
                                 ssl_context=server_context(kit.data_dir))
    except OSError as exc:
        raise ConfigError(f"cannot listen for DICOM over TLS on {config['dicom.bind']}:{port}: "
                          f"{exc.strerror or exc} (see dicom.tls_port)") from None
    bound = server.server_address[1]
    kit.dicom_tls_port = bound
    log.info("DICOM TLS receiver listening on port %d as %s", bound, config["dicom.ae_title"])
    return Receiver(server, bound)


class _Off:
    def stop(self) -> None:
        pass
