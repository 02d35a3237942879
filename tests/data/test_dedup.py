"""Normalisation, exact keys and MinHash-LSH near-duplicate detection, measured on a labelled fixture."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from fixtures_gen import NearDupFixture, near_dup_fixture, reword

from tunesmith.data import dedup
from tunesmith.data.dedup import (
    DEFAULT_THRESHOLD,
    NearDupIndex,
    cross_contamination,
    dedup_key,
    find_near_duplicates,
    lsh_params,
    normalize_text,
    shingles,
)


@pytest.fixture(scope="module")
def fixture() -> NearDupFixture:
    return near_dup_fixture(n_pairs=1000, n_distinct=1000, seed=13)


@pytest.fixture(scope="module")
def found(fixture: NearDupFixture) -> list[tuple[int, int, float]]:
    return find_near_duplicates(fixture.texts)


def _jaccard(a: set[bytes], b: set[bytes]) -> float:
    return len(a & b) / len(a | b)


# --------------------------------------------------------------------------------------------------------
# Normalisation and exact keys
# --------------------------------------------------------------------------------------------------------


def test_normalize_text_unifies_unicode_quotes_dashes_and_spacing() -> None:
    raw = "  \u201cCaf\u00e9\u201d \u2014 it\u2019s   the  \ufb01le\u00a0\uff11\uff12\u200b3\n\tOK "
    assert normalize_text(raw) == '"Caf\u00e9" - it\'s the file 123 OK'


def test_normalize_text_composes_and_keeps_case() -> None:
    assert normalize_text("Cafe\u0301 ORDER") == "Caf\u00e9 ORDER"
    assert normalize_text("") == ""
    assert normalize_text(" \n\t ") == ""


def test_dedup_key_ignores_case_spacing_and_typography_only() -> None:
    key = dedup_key("Please refund order #123, it\u2019s broken.")
    assert key == dedup_key("  please   REFUND order #123, it's broken. ")
    assert key != dedup_key("Please refund order #124, it's broken.")
    assert re.fullmatch(r"[0-9a-f]{32}", key)


# --------------------------------------------------------------------------------------------------------
# Shingles
# --------------------------------------------------------------------------------------------------------


def test_shingles_are_word_unigrams_by_default() -> None:
    assert shingles("The Printer is BROKEN, and the printer smells!") == {
        b"the",
        b"printer",
        b"is",
        b"broken",
        b"and",
        b"smells",
    }


def test_shingles_keep_function_words_which_carry_short_texts() -> None:
    # CLINC150: "where were you made" and "who made you" are two intents; without function words both
    # would be {made}.
    assert shingles("where were you made") != shingles("who made you")
    assert b"not" in shingles("It is not working")
    assert shingles("What is it?") == {b"what", b"is", b"it"}
    assert shingles("") == set()
    assert shingles("  ...  ") == set()


def test_shingles_word_ngrams_and_short_texts() -> None:
    bigrams = {b"refund is", b"is broken", b"broken today"}
    assert shingles("refund is broken today", n=2) == bigrams
    assert shingles("refund printer", n=3) == {b"refund printer"}
    assert shingles("caf\u00e9 na\u00efve", n=1) == {"caf\u00e9".encode(), "na\u00efve".encode()}
    with pytest.raises(ValueError):
        shingles("x", n=0)


# --------------------------------------------------------------------------------------------------------
# NearDupIndex
# --------------------------------------------------------------------------------------------------------

BASE = (
    "Hi team, my order #48213 for the standing desk arrived with a cracked screen on March 3, so could you "
    "please send a replacement unit within three business days and confirm by email?"
)


def test_index_add_returns_earlier_near_duplicates_best_first() -> None:
    index = NearDupIndex()
    assert index.add("a", BASE) == []
    assert index.add("b", "Completely unrelated: the quarterly tax report for Lyon is attached.") == []
    reworded = BASE.replace("please send", "kindly ship").replace("#48213", "#48218")
    assert index.add("c", reworded) == ["a"]
    assert index.add("d", BASE) == ["a", "c"]  # exact copy of a (1.0) ranks above the rewording of a
    assert len(index) == 4 and "c" in index and "zz" not in index


def test_index_query_does_not_insert() -> None:
    index = NearDupIndex()
    index.add("a", BASE)
    hits = index.query(BASE.upper())
    assert [k for k, _ in hits] == ["a"] and hits[0][1] == 1.0
    assert len(index) == 1
    assert index.query("nothing alike at all, a poem about autumn leaves") == []


def test_index_rejects_duplicate_keys_and_bad_settings() -> None:
    index = NearDupIndex()
    index.add("a", BASE)
    with pytest.raises(ValueError, match="already"):
        index.add("a", "other text")
    with pytest.raises(ValueError):
        NearDupIndex(threshold=0.0)
    with pytest.raises(ValueError):
        NearDupIndex(num_perm=8)


def test_index_skips_texts_without_words() -> None:
    index = NearDupIndex()
    assert index.add("empty", "   ") == []
    assert index.add("empty2", "?!") == []
    assert len(index) == 0 and index.query("") == []


def test_index_seed_changes_signatures_not_answers() -> None:
    a, b = NearDupIndex(seed=1), NearDupIndex(seed=2)
    for idx in (a, b):
        idx.add("a", BASE)
    assert a.query(BASE) == b.query(BASE) == [("a", 1.0)]


def test_lsh_params_follow_the_documented_rule() -> None:
    b, r = lsh_params(DEFAULT_THRESHOLD, 128)
    assert b * r <= 128

    def p(s: float) -> float:
        return 1 - (1 - s**r) ** b

    assert p(DEFAULT_THRESHOLD) >= 0.7
    assert p(DEFAULT_THRESHOLD - 0.2) <= 0.15
    for t in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
        for perms in (16, 64, 128, 256):
            b, r = lsh_params(t, perms)
            assert b >= 2 and b * r <= perms


# --------------------------------------------------------------------------------------------------------
# The labelled fixture: >= 1,000 planted pairs, >= 1,000 distinct same-domain texts
# --------------------------------------------------------------------------------------------------------


def test_fixture_shape_and_difficulty(fixture: NearDupFixture) -> None:
    texts = fixture.texts
    assert len(fixture.pairs) >= 1000
    in_pairs = {i for pair in fixture.pairs for i in pair}
    assert len(texts) - len(in_pairs) >= 1000
    assert all(20 <= len(t.split()) <= 66 for t in texts)
    # Every copy is reworded (2-4 word edits at least), never an exact duplicate.
    assert all(dedup_key(texts[i]) != dedup_key(texts[j]) for i, j in fixture.pairs)
    assert all(sum(e in ("sub", "ins", "del") for e in how) >= 2 for how in fixture.edits.values())
    kinds = {e for how in fixture.edits.values() for e in how}
    assert kinds == {"sub", "ins", "del", "number", "reorder"}

    # The hard case: texts that are not duplicates still share template skeletons and vocabulary. Pairs
    # from one template are more than twice as alike as pairs from different templates (0.24 against 0.10
    # mean Jaccard of word sets), and the most similar of them (0.70) reach the least similar planted pair
    # (0.70): no threshold leaves room between the two.
    sets = [shingles(t) for t in texts]
    by_template: dict[int, list[int]] = {}
    for i, t_id in enumerate(fixture.template):
        by_template.setdefault(t_id, []).append(i)
    same_parts = []
    for ids in by_template.values():
        # All within-template Jaccards at once: intersections by matrix product, unions from set sizes.
        vocab = {w: k for k, w in enumerate(set().union(*(sets[i] for i in ids)))}
        onehot = np.zeros((len(ids), len(vocab)), dtype=np.float32)
        for row, i in enumerate(ids):
            onehot[row, [vocab[w] for w in sets[i]]] = 1.0
        sizes = onehot.sum(axis=1)
        inter = onehot @ onehot.T
        jac = inter / (sizes[:, None] + sizes[None, :] - inter)
        local = {text_id: k for k, text_id in enumerate(ids)}
        for i, j in fixture.pairs:
            if i in local and j in local:
                jac[local[i], local[j]] = jac[local[j], local[i]] = np.nan
        same_parts.append(jac[np.triu_indices(len(ids), k=1)])
    same = np.concatenate(same_parts)
    same = same[~np.isnan(same)]
    rng = random.Random(0)
    across = [
        _jaccard(sets[i], sets[j])
        for i, j in (rng.sample(range(len(texts)), 2) for _ in range(5000))
        if fixture.template[i] != fixture.template[j]
    ]
    planted = [_jaccard(sets[i], sets[j]) for i, j in fixture.pairs]
    assert len(by_template) >= 20 and min(len(ids) for ids in by_template.values()) >= 50
    assert same.mean() > 2 * sum(across) / len(across)
    assert same.max() > min(planted) - 0.01


def test_near_duplicates_recall_and_precision_on_fixture(
    fixture: NearDupFixture, found: list[tuple[int, int, float]]
) -> None:
    predicted = {(i, j) for i, j, _ in found}
    true_pos = len(predicted & fixture.pairs)
    recall = true_pos / len(fixture.pairs)
    precision = true_pos / len(predicted)
    # Measured with the defaults (word unigrams, threshold 0.7, 128 permutations): see benchmarks/dedup_real.py.
    assert recall >= 0.95, f"recall {recall:.3f}"
    assert precision >= 0.95, f"precision {precision:.3f}"


def test_near_duplicates_output_contract(found: list[tuple[int, int, float]]) -> None:
    later = [j for _, j, _ in found]
    assert later == sorted(later) and len(set(later)) == len(later)
    assert all(i < j and DEFAULT_THRESHOLD <= est <= 1.0 for i, j, est in found)


def test_threshold_08_would_miss_rewordings(fixture: NearDupFixture) -> None:
    # Why the default is 0.7: at 0.8 about one planted rewording in eight is lost (measured recall 0.87,
    # against 0.99 at 0.7), while precision is already >= 0.99 at 0.7.
    strict = {(i, j) for i, j, _ in find_near_duplicates(fixture.texts, threshold=0.8)}
    assert len(strict & fixture.pairs) / len(fixture.pairs) < 0.9


def test_exact_duplicates_are_reported_against_first_occurrence() -> None:
    texts = [BASE, "Unrelated text about quarterly taxes in Lyon.", BASE.lower(), "  " + BASE + " ", BASE]
    assert find_near_duplicates(texts) == [(0, 2, 1.0), (0, 3, 1.0), (0, 4, 1.0)]


def test_near_duplicate_reported_once_against_best_earlier_text() -> None:
    rng = random.Random(5)
    copy1, _ = reword(BASE, rng)
    texts = [copy1, BASE, BASE.replace("#48213", "#48299")]
    result = find_near_duplicates(texts)
    assert [(i, j) for i, j, _ in result] == [(0, 1), (1, 2)]


def test_find_near_duplicates_edge_inputs() -> None:
    assert find_near_duplicates([]) == []
    # "?" is sentence punctuation only: the same (empty) text as "".
    assert find_near_duplicates(["", "", "?"]) == [(0, 1, 1.0), (0, 2, 1.0)]
    assert find_near_duplicates([BASE]) == []


def test_find_near_duplicates_is_deterministic(fixture: NearDupFixture) -> None:
    sample = fixture.texts[:400]
    assert find_near_duplicates(sample) == find_near_duplicates(list(sample))


def test_helper_process_path_gives_identical_results(
    fixture: NearDupFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = fixture.texts[:900]
    expected = find_near_duplicates(texts)
    expected_cross = cross_contamination(texts[:400], texts[400:])
    monkeypatch.setattr(dedup, "_CHUNK", 200)
    monkeypatch.setattr(dedup, "_use_helper", lambda n: True)
    # fork keeps the test fast (a spawned child spends seconds importing numpy and datasketch); the
    # chunking, ordering and hand-over logic under test is the same. The benchmark runs the spawn path.
    monkeypatch.setattr(dedup, "_START_METHOD", "fork")
    assert find_near_duplicates(texts) == expected
    assert cross_contamination(texts[:400], texts[400:]) == expected_cross


def test_helper_process_failure_falls_back_to_this_process(
    fixture: NearDupFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = fixture.texts[:300]
    expected = find_near_duplicates(texts)

    class Broken:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def submit(self, *args: object, **kwargs: object) -> object:
            raise RuntimeError("cannot start a process here")

        def shutdown(self, *args: object, **kwargs: object) -> None:
            pass

    monkeypatch.setattr(dedup, "_CHUNK", 64)
    monkeypatch.setattr(dedup, "_use_helper", lambda n: True)
    monkeypatch.setattr(dedup, "ProcessPoolExecutor", Broken)
    assert find_near_duplicates(texts) == expected


# --------------------------------------------------------------------------------------------------------
# Train / eval contamination
# --------------------------------------------------------------------------------------------------------


def test_cross_contamination_finds_exact_and_near_overlap(fixture: NearDupFixture) -> None:
    pairs = sorted(fixture.pairs)[:50]
    pair_members = {i for p in pairs for i in p} | {i for p in fixture.pairs for i in p}
    unrelated = [i for i in range(len(fixture.texts)) if i not in pair_members][:300]
    train = [fixture.texts[i] for i, _ in pairs] + [fixture.texts[i] for i in unrelated]
    other = [fixture.texts[j] for _, j in pairs[:40]]  # reworded copies of train[0:40]
    other += [train[45].upper(), "An eval question nobody trained on: what is a B-tree?"]
    hits = cross_contamination(train, other)
    as_pairs = {(i, j) for i, j, _ in hits}
    near_found = sum((k, k) in as_pairs for k in range(40))
    assert near_found >= 38
    assert (45, 40, 1.0) in hits
    assert not any(j == 41 for _, j, _ in hits)
    assert hits == sorted(hits)
    assert len(as_pairs) <= near_found + 1 + 2  # at most a couple of extra same-template matches


def test_cross_contamination_reports_every_matching_train_copy() -> None:
    train = [BASE, "Something else entirely about invoices for Porto.", BASE.upper()]
    assert cross_contamination(train, [BASE]) == [(0, 0, 1.0), (2, 0, 1.0)]
    assert cross_contamination([], [BASE]) == []
    assert cross_contamination(train, []) == []
