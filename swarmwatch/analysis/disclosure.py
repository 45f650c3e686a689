"""k-anonymity for published counts: primary and complementary suppression.

Answers no longer use protect(): complementary suppression cannot cover windows or
crossed hierarchies (below), so every number a non-owner reads is cell-key perturbed
instead (swarmwatch.analysis.cellkey). The rule is kept, with its property tests, as
the documented baseline the attack tests compare against.

The rule
--------
1. Primary: a count c with 0 < c < k is withheld.
2. Complementary: a withheld count must not be recoverable by subtraction.
   Counts come in *groups* whose total is published somewhere (all places of a
   level against the located total; the cities of a metro or country against
   that metro's or country's count; the cells of a frame against the frame's
   total; cells against their parent cell). Within a group, the withheld
   members H are known only as their sum S = total - published. protect()
   withholds more members, smallest first, until for every group either H is
   empty or H has at least two members and, for each member h, the others in
   H hold at least k peers between them (S - c_h >= k). Then no withheld count
   is pinned down by the group total: each one hides behind >= k other peers.
   Members that are never published (peers placed only at country level, peers
   with no place) but can be derived from a total are treated like published
   ones: withheld from the start when below k, taken as known otherwise.
3. Groups are checked repeatedly until no group changes (a member withheld for
   one group changes the sums of the others).

Not covered (documented limits): differencing two *time windows* (each window is
protected on its own), and crossing unrelated hierarchies (a city against the H3
cell it lies in).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

RULE = (
    "counts below k are withheld; withheld members of any published total are grown "
    "(smallest first) until each hides behind at least k other withheld peers"
)


def protect(
    counts: Mapping[K, int],
    k: int,
    groups: Iterable[Sequence[K]] = (),
    *,
    unpublished: Collection[K] = (),
    whole: bool = True,
) -> set[K]:
    """The keys to withhold from `counts` (see the module docstring).

    `groups` are the sets of keys whose total is published; the published keys
    of `counts` form one more group unless `whole` is False (nested counts,
    such as a total next to its own parts, are described by `groups` alone).
    `unpublished` keys are in counts (so they count in sums) but are never
    shown; they are not in the returned set and never withheld as complements.
    """
    never = set(unpublished)
    hidden: set[K] = {key for key, c in counts.items() if 0 < c < k}
    # The whole level is a group, but without never-published remainders: those are
    # summed into published totals elsewhere (anomalies), so they protect nothing here.
    published = [key for key in counts if key not in never]
    all_groups: list[Sequence[K]] = [published] if whole else []
    all_groups += [g for g in groups if len(g) > 1]
    # Checking a group depends only on which of its members are withheld, so a group is
    # checked again only once a member of it was withheld since its last check (the
    # others would be no-ops): the same passes, in the same order, with the same
    # result as checking every group on every pass, at a fraction of the cost on a
    # frame of thousands of cells (tests/test_disclosure_property.py compares both).
    member_of: dict[K, list[int]] | None = None
    dirty = set(range(len(all_groups)))
    # Groups are sorted (smallest first) only once they hold a withheld member: most
    # never do, and a set's isdisjoint() skips them at C speed on every pass.
    ordered: dict[int, tuple[list[K], set[K]]] = {}
    changed = True
    while changed:
        changed = False
        for index, raw in enumerate(all_groups):
            if index not in dirty:
                continue
            dirty.discard(index)
            if hidden.isdisjoint(raw):
                continue
            entry = ordered.get(index)
            if entry is None:
                entry = ordered[index] = (sorted(raw, key=counts.__getitem__), set(raw))
            group, members_set = entry
            # Only the withheld members' count, sum and largest matter, not their order:
            # walk whichever of the two is smaller.
            if len(hidden) < len(group):
                members = [x for x in hidden if x in members_set and counts[x] > 0]
            else:
                members = [x for x in group if x in hidden and counts[x] > 0]
            if not members:
                continue
            total = sum(counts[x] for x in members)
            biggest = max(counts[x] for x in members)
            # Withholding a never-published remainder changes nothing a reader sees.
            candidates = (x for x in group if x not in hidden and x not in never and counts[x] > 0)
            while len(members) < 2 or total - biggest < k:
                extra = next(candidates, None)
                if extra is None:
                    break
                hidden.add(extra)
                members.append(extra)
                total += counts[extra]
                biggest = max(biggest, counts[extra])
                changed = True
                if member_of is None:
                    member_of = {}
                    for i, g in enumerate(all_groups):
                        for x in g:
                            member_of.setdefault(x, []).append(i)
                dirty.update(member_of.get(extra, ()))
    return hidden - set(unpublished)


def publish(count: int, k: int) -> int | None:
    """A lone count with no published parts: shown when >= k, else None."""
    return count if count >= k else None


__all__ = ["RULE", "protect", "publish"]
