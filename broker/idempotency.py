"""The handlers' idempotency helper under its first name: ``from broker.idempotency import idempotent``.

The helper is :mod:`broker.handler_api.idempotency`; this module re-exports its public names, so
handlers written for the first name keep working.
"""

from broker.handler_api.idempotency import *  # noqa: F403
from broker.handler_api.idempotency import __all__ as __all__
