"""protect(): the k-anonymity rule holds for any counts and groups (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from swarmwatch.analysis.disclosure import protect

counts_st = st.dictionaries(st.integers(0, 25), st.integers(0, 40), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(counts=counts_st, k=st.integers(2, 6), data=st.data())
def test_every_group_hides_each_withheld_count_behind_k_others(
    counts: dict[int, int], k: int, data: st.DataObject
) -> None:
    keys = sorted(counts)
    groups = data.draw(st.lists(st.lists(st.sampled_from(keys), unique=True), max_size=5))
    hidden = protect(counts, k, groups)
    # Primary: every count below k (and above 0) is withheld.
    assert {x for x, c in counts.items() if 0 < c < k} <= hidden
    for group in [keys, *groups]:
        members = [counts[x] for x in group if x in hidden and counts[x] > 0]
        if not members:
            continue
        exhausted = all(x in hidden for x in group if counts[x] > 0)
        # Complementary: >= 2 withheld, each behind >= k other withheld peers, unless
        # the whole group is withheld (then its total reveals no single member either).
        assert exhausted or (len(members) >= 2 and sum(members) - max(members) >= k)


def _reference_protect(
    counts: dict[int, int], k: int, groups: list[list[int]], unpublished: set[int]
) -> set[int]:
    """protect() as first written: every group with a withheld member, every pass."""
    never = set(unpublished)
    hidden = {key for key, c in counts.items() if 0 < c < k}
    all_groups = [[key for key in counts if key not in never]]
    all_groups += [g for g in groups if len(g) > 1]
    ordered: dict[int, list[int]] = {}
    changed = True
    while changed:
        changed = False
        for index, raw in enumerate(all_groups):
            if hidden.isdisjoint(raw):
                continue
            group = ordered.get(index)
            if group is None:
                group = ordered[index] = sorted(raw, key=counts.__getitem__)
            members = [x for x in group if x in hidden and counts[x] > 0]
            if not members:
                continue
            total = sum(counts[x] for x in members)
            biggest = max(counts[x] for x in members)
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
    return hidden - never


@settings(max_examples=500, deadline=None)
@given(counts=counts_st, k=st.integers(2, 6), data=st.data())
def test_same_answer_as_checking_every_group_every_pass(
    counts: dict[int, int], k: int, data: st.DataObject
) -> None:
    keys = sorted(counts)
    groups = data.draw(st.lists(st.lists(st.sampled_from(keys), unique=True), max_size=8))
    unpublished = set(data.draw(st.lists(st.sampled_from(keys), max_size=2)))
    assert protect(counts, k, groups, unpublished=unpublished) == _reference_protect(
        counts, k, groups, unpublished
    )
