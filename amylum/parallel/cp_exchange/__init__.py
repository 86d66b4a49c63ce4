"""K/V exchanges for CP attention: every rank's keys, or only the blocks its queries may see.

Both take this rank's K/V (one tensor, K and V concatenated on the last dim, shape
(1, H, n_local, 2D)) and return the keys this rank's queries attend against, in global order,
with the queries' key intervals in *those keys'* coordinates (``lo``/``hi``) and their count
(``kv_len``):

* :class:`AllGatherKV` — one all-gather of the whole sequence (Llama-3 style). Every rank holds
  all N keys; the collective moves each part padded to the largest rank's count.
* :class:`SparseKV` — mask-aware point-to-point exchange. Who sends which of its tokens to whom
  is decided on the host before the step (:func:`sparse_kv_plan`, from the planner's
  ``received_keys``), so a layer runs a fixed list of sends and receives: no data-dependent
  collective inside the model. The backward returns each received token's dK/dV to its owner,
  which adds them to its own.

A query's allowed keys form one interval of global positions, and every key in it is needed,
so it is present among the received keys: in received-key coordinates the interval stays an
interval (``searchsorted``), and the dense or block-sparse mask is built from it unchanged.

Each exchange counts what it moved (:class:`KVTraffic`, per microbatch, travelling with it),
from the tensors it actually received and returned, per layer call.

Both run in two halves, each an autograd node: ``start`` posts the communication (async) and
hands back this rank's own K/V at once, ``wait`` returns the received K/V once they are in.
``exchange(kv)`` runs both back to back; ``cp_overlap`` attends to the own keys in between,
and the backward's dK/dV return likewise overlaps the own keys' attention backward.

Files, one job each: ``base`` (the traffic record and the start/wait halves as autograd nodes,
shared by both exchanges), ``allgather`` and ``sparse`` (with the sparse exchange's host-side
plan).
"""

from .allgather import AllGatherKV
from .base import EXCHANGES, KVTraffic
from .sparse import SparseKV, SparseKVPlan, sparse_kv_plan

__all__ = ["EXCHANGES", "AllGatherKV", "KVTraffic", "SparseKV", "SparseKVPlan", "sparse_kv_plan"]
