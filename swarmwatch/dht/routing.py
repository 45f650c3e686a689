"""Kademlia routing table (BEP 5): k-buckets by XOR-distance prefix from our id.

A flat table of 160 buckets (one per shared-prefix length) keeps the code
small; a crawler only needs good starting points for lookups, not a full mesh.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from swarmwatch.dht.krpc import NodeInfo
from swarmwatch.dht.nodeid import distance

#: BEP 5: K, the bucket size and the number of closest nodes a lookup returns.
K = 8
#: Consecutive failed queries after which a node counts as bad and is evicted.
MAX_FAILURES = 2


class RoutingTable:
    """Nodes we know, K per bucket, least recently seen first (Kademlia §2.2)."""

    def __init__(self, own_id: bytes, k: int = K) -> None:
        self.own_id = own_id
        self.k = k
        self._buckets: list[OrderedDict[tuple[str, int], NodeInfo]] = [
            OrderedDict() for _ in range(161)
        ]
        self._failures: dict[tuple[str, int], int] = {}

    def _bucket(self, node_id: bytes) -> OrderedDict[tuple[str, int], NodeInfo]:
        return self._buckets[distance(self.own_id, node_id).bit_length()]

    def add(self, node: NodeInfo) -> bool:
        """Insert or refresh node; a full bucket first drops a node that failed."""
        if node.node_id == self.own_id:
            return False
        bucket = self._bucket(node.node_id)
        if node.addr in bucket:
            bucket.move_to_end(node.addr)
            bucket[node.addr] = node
            self._failures.pop(node.addr, None)
            return True
        if len(bucket) >= self.k:
            failed = [a for a in bucket if self._failures.get(a, 0) > 0]
            if not failed:
                return False  # Kademlia prefers old live nodes over new ones
            del bucket[failed[0]]
            self._failures.pop(failed[0], None)
        bucket[node.addr] = node
        return True

    def mark_failed(self, node: NodeInfo) -> None:
        bucket = self._bucket(node.node_id)
        if node.addr not in bucket:
            return
        count = self._failures.get(node.addr, 0) + 1
        if count >= MAX_FAILURES:
            del bucket[node.addr]
            self._failures.pop(node.addr, None)
        else:
            self._failures[node.addr] = count

    def closest(self, target: bytes, n: int = K) -> list[NodeInfo]:
        nodes = [node for bucket in self._buckets for node in bucket.values()]
        nodes.sort(key=lambda node: distance(node.node_id, target))
        return nodes[:n]

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets)

    def __iter__(self) -> Iterator[NodeInfo]:
        for bucket in self._buckets:
            yield from bucket.values()


__all__ = ["K", "MAX_FAILURES", "RoutingTable"]
