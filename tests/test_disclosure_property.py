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
