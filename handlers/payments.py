"""Example: charge an order once, however often its event is delivered.

The event is ``{"order_id": "A-1001", "amount": 42.5}``. The charge (here a line appended to a
ledger file, standing in for a call to a payment provider) runs once per order id for a day: a
redelivered event, a retry after a later failure, or a second event for the same order gets the
first charge's receipt back instead of charging again.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from broker.handler_api.idempotency import idempotent

# An object in the `ledger` bucket: the bucket folders are the one place of the project the sandbox
# user may write (var/ is the stack's own). No trigger watches that bucket.
LEDGER = Path(os.environ.get("PAYMENTS_LEDGER", "buckets/ledger/payments.jsonl"))


@idempotent(key="order_id", expires_after_seconds=24 * 3600)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    amount = float(event["amount"])
    if amount <= 0:
        raise ValueError(f"amount must be positive, got {amount}")  # nothing charged: a retry may run
    receipt = {"order_id": event["order_id"], "amount": amount, "receipt": str(uuid.uuid4()),
               "request_id": context.aws_request_id}
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    with LEDGER.open("a") as ledger:
        ledger.write(json.dumps(receipt) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())
    return receipt
