"""The ledger of scratch layouts: what ocibuild created, which build holds it, and the GC that trusts it."""

from ocibuild.ledger.db import LeaseRow, Ledger, ObjectRow
from ocibuild.ledger.lease import Lease, lease_state
from ocibuild.ledger.scratch import Scratch, default_scratch_dir

__all__ = ["Lease", "LeaseRow", "Ledger", "ObjectRow", "Scratch", "default_scratch_dir", "lease_state"]
