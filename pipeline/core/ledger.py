"""The release ledger, as the pipeline names it: its pure code lives in api/release/ledger.py.

It moved there because replicas read it too: a canary state is bound to the
ledger entry that started its rollout (api/release/traffic.py), and the
serving image ships api/ only.
"""

from api.release.contract import HISTORY_PREFIX
from api.release.ledger import (
    Ledger,
    entry_key,
    is_rollback,
    make_entry,
    read_ledger,
    signed_payload,
    text_hash,
)

__all__ = [
    "HISTORY_PREFIX",
    "Ledger",
    "entry_key",
    "is_rollback",
    "make_entry",
    "read_ledger",
    "signed_payload",
    "text_hash",
]
