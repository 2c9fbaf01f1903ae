"""The running kit (layer 4, with web/ and cli/ the wiring layer): `Kit` and `open_kit`
(core.py), what `serve` starts and answers (registry.py), the control socket (control.py),
lock and unlock (lock.py), the log redactor's patient learner (redaction.py) and `serve`
itself (serve.py)."""

from .core import CONFIG_FILE, RUN_FILE, Kit, load_config, open_kit, unlock_data_key
from .registry import CONTROL_OPS, LOCKED_SERVICES, SERVICES, resolve
from .serve import QUIET_LOGGERS, serve, setup_logging

__all__ = ["CONFIG_FILE", "RUN_FILE", "Kit", "load_config", "open_kit", "unlock_data_key", "CONTROL_OPS",
           "LOCKED_SERVICES", "SERVICES", "resolve", "QUIET_LOGGERS", "serve", "setup_logging"]
