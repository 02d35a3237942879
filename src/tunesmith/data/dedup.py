"""Text normalisation, exact-duplicate keys and near-duplicate detection with MinHash LSH.

Representation: a text is the *set of its words*: ``\\w+`` tokens of the casefolded, normalised text.
Sets are compared with 128-permutation MinHash (datasketch, crc32-hashed bytes) indexed in datasketch's
``MinHashLSH``.

Why all words, function words included (measured by ``benchmarks/dedup_real.py``): in short texts the
function words carry the meaning. On CLINC150's crowd-sourced queries (150 intents, ~8 words each)
"where were you made" (intent where_are_you_from) and "who made you" (who_made_you) are one set once the
function words go ({made}): 227 pairs of train queries with two different intents had identical
content-word sets, against 0 with every word kept. On the planted fixture (support messages of 20-60
words, each duplicate a copy reworded by 2-4 word edits, half with a changed number, a third with two
clauses swapped, the distinct texts other fills of the same 24 templates) all words at 0.7 find 0.987 of
the planted pairs at precision 0.998 (content words at 0.6: 0.991 / 0.998; at 0.7: 0.938): word
unigrams survive rewording, while every n-gram that spans an edit is lost.

Threshold: 0.7. A text of n words with k substituted words keeps a Jaccard of (n-k)/(n+k): at 0.7 a
20-word message may differ in 3 words, a 6-word query in one. That is why the data stage compares texts
shorter than ``MIN_NEAR_WORDS`` words exactly only (see `tunesmith.data.clean`): among short texts a
one-word difference is a paraphrase or another intent, not a copy. The LSH bands are chosen for the
threshold (`lsh_params`), and every candidate is then kept only if its MinHash Jaccard estimate reaches it.

Memory: per distinct indexed text, one signature (4 bytes x num_perm) plus one bucket entry per LSH band
plus a 16-byte exact key: about 2.4 KB, so ~2.4 GB for a million texts.
"""

from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing
import os
import re
import unicodedata
import zlib
from array import array
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH
from datasketch.storage import UnorderedStorage

from tunesmith.io import usable_cpus

DEFAULT_THRESHOLD = 0.7
# Texts with fewer words are compared exactly only by the data stage (see the module docstring).
MIN_NEAR_WORDS = 20
DEFAULT_NUM_PERM = 128
DEFAULT_SEED = 1
# LSH banding: the fewest bands (memory and time are per band) such that a pair right at the threshold
# becomes a candidate with probability >= 0.7 while a pair 0.2 below it does with probability <= 0.15.
# Candidates are then verified against the MinHash estimate, so extra candidates cost a comparison each
# while a missed one is a lost duplicate; duplicates mostly sit well above the threshold, so 0.7 at the
# threshold itself still finds ~99% of the fixture's pairs.
_P_AT_THRESHOLD = 0.7
_P_BELOW = 0.15
_BELOW_GAP = 0.2

# Typographic variants that NFKC leaves alone but that differ between copies of the same text (word
# processors "smarten" quotes and dashes).
_TRANSLATE = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2035\u02bc\uff07", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb\uff02", '"'),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
        # Zero-width characters are invisible yet break token and byte equality.
        **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", None),
    }
)
_WORD_RE = re.compile(r"\w+")


def normalize_text(text: str) -> str:
    """NFKC, straight quotes and ASCII hyphens, whitespace runs collapsed to one space, stripped; keeps
    case."""
    if not text.isascii():  # NFKC and the table are identities on ASCII, the common case
        text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    return " ".join(text.split())


def _digest(folded: str) -> bytes:
    return hashlib.blake2b(folded.encode("utf-8"), digest_size=16).digest()


# Sentence punctuation at either end ("Tell me my balance." / "tell me my balance") does not make two texts
# different; inside a text it may ("a+b" / "a-b"), so it stays there.
_EDGE_PUNCTUATION = " .,;:!?\u00bf\u00a1\u2026"


def _exact_form(text: str) -> str:
    return normalize_text(text).casefold().strip(_EDGE_PUNCTUATION)


def exact_digest(text: str) -> bytes:
    """`dedup_key` as 16 raw bytes."""
    return _digest(_exact_form(text))


def dedup_key(text: str) -> str:
    """Exact-duplicate key (blake2b-128, hex) of the casefolded normalised text: equal for texts that differ
    only in case, Unicode form, quote or dash style, spacing, or sentence punctuation at either end."""
    return _digest(_exact_form(text)).hex()


def _words(folded: str) -> list[str]:
    return _WORD_RE.findall(folded)


def word_count(text: str) -> int:
    """Words as the index counts them (what `MIN_NEAR_WORDS` is compared with)."""
    return len(_words(normalize_text(text).casefold()))


def shingles(text: str, n: int = 1) -> set[bytes]:
    """Word n-grams (UTF-8, words joined by one space) of the casefolded normalised text; the default,
    unigrams, is what the index uses (see the module docstring).

    A text with fewer than `n` words yields them as one shingle, so short texts still compare; a text
    without words yields an empty set.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = _words(normalize_text(text).casefold())
    if n == 1:
        return {w.encode("utf-8") for w in words}
    if not words:
        return set()
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


# Inputs at least this long get their signatures computed in a helper process (one core hashes while the
# other runs the LSH); below it, starting the process (a second or more: the child imports numpy and
# datasketch) would cost more than it saves.
_PARALLEL_MIN_TEXTS = 50_000
_CHUNK = 4096
_IN_FLIGHT = 4  # chunks submitted ahead; bounds the memory held by finished but unconsumed results
# spawn, not fork: forking a process that may hold threads (torch, tokenizers) can deadlock the child.
_START_METHOD = "spawn"


def _prepare(text: str) -> tuple[bytes, set[bytes]]:
    # One normalisation pass serves both the exact key and the shingles.
    folded = normalize_text(text).casefold()
    return _digest(folded.strip(_EDGE_PUNCTUATION)), {w.encode("utf-8") for w in _words(folded)}


def sketch_texts(
    texts: list[str], num_perm: int = DEFAULT_NUM_PERM, seed: int = DEFAULT_SEED
) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Exact-key digests, MinHash signatures and a has-words mask for a chunk of texts.

    Module-level so that a helper process can run it; the in-process path runs the same code, so both
    give identical results.
    """
    mh = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
    digests: list[bytes] = []
    sigs = np.empty((len(texts), num_perm), dtype=np.uint32)
    has_words = np.zeros(len(texts), dtype=bool)
    for k, text in enumerate(texts):
        digest, tokens = _prepare(text)
        digests.append(digest)
        if tokens:
            mh.clear()
            mh.update_batch(tokens)
            sigs[k] = mh.hashvalues
            has_words[k] = True
    return digests, sigs, has_words


def sketch_sides(
    texts: list[str], num_perm: int = DEFAULT_NUM_PERM, seed: int = DEFAULT_SEED
) -> tuple[list[bytes], list[bytes], np.ndarray, np.ndarray, np.ndarray]:
    """For one side (prompt or answer) of a chunk of examples: the exact key of each text (as `dedup_key`:
    case, Unicode form and spacing aside), the digest of its word sequence (punctuation aside too), MinHash
    signatures, a has-words mask and word counts."""
    mh = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
    exact: list[bytes] = []
    digests: list[bytes] = []
    sigs = np.zeros((len(texts), num_perm), dtype=np.uint32)
    has_words = np.zeros(len(texts), dtype=bool)
    counts = np.zeros(len(texts), dtype=np.int32)
    for k, text in enumerate(texts):
        folded = normalize_text(text).casefold()
        words = _words(folded)
        exact.append(_digest(folded.strip(_EDGE_PUNCTUATION)))
        digests.append(_digest(" ".join(words)))
        counts[k] = len(words)
        if words:
            mh.clear()
            mh.update_batch({w.encode("utf-8") for w in words})
            sigs[k] = mh.hashvalues
            has_words[k] = True
    return exact, digests, sigs, has_words, counts


def _use_helper(n_texts: int) -> bool:
    """Whether hashing in a helper process pays: a large input, and a core to spare right now.

    The helper takes ~45% of the per-text CPU work (normalising, hashing) off this process, but only a
    core that is otherwise idle turns that into speed; on a machine already busy it only adds contention
    (measured: ~25% slower with another CPU-bound job on a 2-core box).
    """
    if n_texts < _PARALLEL_MIN_TEXTS:
        return False
    cpus = usable_cpus()
    try:
        busy = os.getloadavg()[0]  # includes this process once it has been running a while
    except OSError:
        busy = 0.0
    return cpus >= 2 and cpus - busy >= 0.5


def _signature_stream(
    texts: Sequence[str], num_perm: int, seed: int
) -> Iterator[tuple[bytes, np.ndarray | None]]:
    """(exact-key digest, signature or None for a text without words) per text, in order.

    Large inputs are hashed in one helper process, a few chunks ahead of the consumer; if a process cannot
    be started or dies, the remaining chunks are computed here.
    """
    n = len(texts)
    starts = range(0, n, _CHUNK)

    def chunk(i: int) -> list[str]:
        return [texts[j] for j in range(i, min(i + _CHUNK, n))]

    pool: ProcessPoolExecutor | None = None
    if _use_helper(n):
        try:
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context(_START_METHOD))
        except (OSError, RuntimeError, ValueError):
            pool = None
    pending: deque[Future[tuple[list[bytes], np.ndarray, np.ndarray]]] = deque()
    upcoming = iter(starts)  # runs ahead of `starts`: pending[0] is always the chunk at `i`
    try:
        for i in starts:
            result = None
            if pool is not None:
                try:
                    while len(pending) < _IN_FLIGHT and (ahead := next(upcoming, None)) is not None:
                        pending.append(pool.submit(sketch_texts, chunk(ahead), num_perm, seed))
                    result = pending.popleft().result()
                except Exception:  # no process, or a broken one: finish here
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = None
            if result is None:
                result = sketch_texts(chunk(i), num_perm, seed)
            digests, sigs, has_words = result
            for k, digest in enumerate(digests):
                yield digest, sigs[k] if has_words[k] else None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _CompactSetStorage(UnorderedStorage):
    """In-memory LSH bucket table: bucket -> key, or -> list of keys once a bucket is shared.

    datasketch's default dict storage keeps a Python set per bucket (216 bytes even for one key); with ~20
    bands per text nearly every bucket holds a single key, so those sets would be most of the index's
    memory. Same contract, a bare key in the common case.
    """

    def __init__(self) -> None:
        self._dict: dict[Hashable, Any] = {}

    def keys(self) -> Iterable[Hashable]:
        return self._dict.keys()

    def get(self, key: Hashable) -> list[Hashable]:
        value = self._dict.get(key)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    def insert(self, key: Hashable, *vals: Hashable, **kwargs: Any) -> None:
        d = self._dict
        for val in vals:
            current = d.setdefault(key, val)
            if current is val:
                continue
            if isinstance(current, list):
                if val not in current:
                    current.append(val)
            elif current != val:
                d[key] = [current, val]

    def remove(self, *keys: Hashable, **kwargs: Any) -> None:
        for key in keys:
            del self._dict[key]

    def remove_val(self, key: Hashable, val: Hashable, **kwargs: Any) -> None:
        current = self._dict[key]
        if isinstance(current, list):
            current.remove(val)
            if len(current) == 1:
                self._dict[key] = current[0]
        elif current == val:
            del self._dict[key]
        else:
            raise KeyError(val)

    def size(self) -> int:
        return len(self._dict)

    def itemcounts(self, **kwargs: Any) -> dict[Hashable, int]:
        return {k: len(v) if isinstance(v, list) else 1 for k, v in self._dict.items()}

    def has_key(self, key: Hashable) -> bool:
        return key in self._dict


class _NoKeyTable(UnorderedStorage):
    """Stands in for MinHashLSH's key -> band-hashes table, which only `remove` and `__contains__` read.

    The index never removes and tracks its own keys, so keeping a list of band hashes per text (~280 bytes
    each) would be memory spent for nothing.
    """

    def keys(self) -> Iterable[Hashable]:
        return ()

    def get(self, key: Hashable) -> list[Hashable]:
        return []

    def insert(self, key: Hashable, *vals: Hashable, **kwargs: Any) -> None:
        return None

    def remove(self, *keys: Hashable, **kwargs: Any) -> None:
        raise NotImplementedError("NearDupIndex never removes")

    def remove_val(self, key: Hashable, val: Hashable, **kwargs: Any) -> None:
        raise NotImplementedError("NearDupIndex never removes")

    def size(self) -> int:
        return 0

    def itemcounts(self, **kwargs: Any) -> dict[Hashable, int]:
        return {}

    def has_key(self, key: Hashable) -> bool:
        return False


def _band_key(band: bytes) -> int:
    # A band is r x 4 bytes (20 at the defaults): a 53-byte bytes object per band per text. Its 60-bit hash
    # is a 32-byte int. A collision only adds a candidate, which the signature comparison then rejects.
    return hash(band) & 0x0FFF_FFFF_FFFF_FFFF


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) for MinHashLSH at `threshold`, by the rule at the top of the module.

    When no banding meets both bounds (very low thresholds, few permutations) the one that best separates
    the threshold from 0.2 below it is used.
    """
    below = max(0.0, threshold - _BELOW_GAP)
    options = [(b, r) for r in range(1, num_perm // 2 + 1) for b in range(2, num_perm // r + 1)]

    def p_candidate(s: float, b: int, r: int) -> float:
        return 1.0 - (1.0 - s**r) ** b

    ok = [
        (b, p_candidate(below, b, r), r)
        for b, r in options
        if p_candidate(threshold, b, r) >= _P_AT_THRESHOLD and p_candidate(below, b, r) <= _P_BELOW
    ]
    if ok:
        b, _, r = min(ok)  # fewest bands, then fewest false candidates
        return b, r
    b, r = max(options, key=lambda o: p_candidate(threshold, *o) - p_candidate(below, *o))
    return b, r


@dataclass(eq=False)
class NearDupIndex:
    """Incremental near-duplicate index: word-set MinHash signatures in a datasketch MinHashLSH.

    LSH buckets propose candidates; a candidate is a near-duplicate when its MinHash Jaccard estimate is
    at least `threshold`. Signatures are kept (4 bytes x num_perm per text) for that verification.
    """

    threshold: float = DEFAULT_THRESHOLD
    num_perm: int = DEFAULT_NUM_PERM
    seed: int = DEFAULT_SEED
    _lsh: MinHashLSH = field(init=False, repr=False)
    _mh: MinHash = field(init=False, repr=False)
    _min_agree: int = field(init=False, repr=False)
    _sigs: np.ndarray = field(init=False, repr=False)
    _n_rows: int = field(init=False, repr=False)
    _keys: list[str] = field(init=False, repr=False)
    _key_rows: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16:
            raise ValueError(f"num_perm must be >= 16, got {self.num_perm}")
        self._lsh = MinHashLSH(
            num_perm=self.num_perm,
            params=lsh_params(self.threshold, self.num_perm),
            hashfunc=_band_key,  # any hashable key works with the in-memory storage
        )
        self._lsh.hashtables = [_CompactSetStorage() for _ in range(self._lsh.b)]
        self._lsh.keys = _NoKeyTable()
        # crc32 is a C builtin, several times cheaper per call than datasketch's default sha1; the affine32
        # scheme runs every hash through a murmur3 finaliser before permuting, so crc32's linearity does
        # not leak into the minimums.
        self._mh = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=zlib.crc32)
        # Integer form of "estimate >= threshold", immune to float rounding of agreements / num_perm.
        self._min_agree = math.ceil(self.threshold * self.num_perm - 1e-9)
        self._sigs = np.empty((0, self.num_perm), dtype=np.uint32)
        self._n_rows = 0
        self._keys = []
        self._key_rows = {}

    def __len__(self) -> int:
        return self._n_rows

    def __contains__(self, key: object) -> bool:
        return key in self._key_rows

    def _sketch(self, tokens: set[bytes]) -> MinHash | None:
        # One MinHash is cleared and refilled per text: constructing or copying one re-validates its
        # permutation arrays, which costs more than hashing a short text. The result is only valid until
        # the next call; the index copies what it keeps.
        if not tokens:
            return None
        self._mh.clear()
        self._mh.update_batch(tokens)
        return self._mh

    def _matches(self, mh: MinHash) -> list[tuple[int, float]]:
        """(row, estimate) of indexed texts with estimate >= threshold, best first, earliest row on ties."""
        rows = self._lsh.query(mh)
        if not rows:
            return []
        # One fancy-indexing gather: on large, homogeneous corpora a query can return hundreds of
        # candidates, and verifying them row by row would dominate the run time.
        idx = np.fromiter(rows, dtype=np.intp, count=len(rows))
        cand = self._sigs[idx]
        agree = np.count_nonzero(cand == mh.hashvalues, axis=1)
        found = [(rows[k], int(agree[k]) / self.num_perm) for k in np.flatnonzero(agree >= self._min_agree)]
        found.sort(key=lambda t: (-t[1], t[0]))
        return found

    def _wrap(self, signature: np.ndarray) -> MinHash:
        # MinHashLSH reads only `hashvalues` (and the scheme); lending our MinHash a precomputed signature
        # avoids constructing an object per text. Valid until the next _sketch/_wrap call.
        self._mh.hashvalues = signature
        return self._mh

    def _reserve(self, rows: int) -> None:
        # np.empty only reserves address space; pages become resident as rows are written, so reserving
        # for a whole known-size input costs memory only for the texts actually indexed.
        if rows > len(self._sigs):
            grown = np.empty((rows, self.num_perm), dtype=np.uint32)
            grown[: self._n_rows] = self._sigs[: self._n_rows]
            self._sigs = grown

    def _insert(self, mh: MinHash) -> int:
        row = self._n_rows
        if row == len(self._sigs):
            self._reserve(max(1024, 2 * row))
        self._sigs[row] = mh.hashvalues
        self._lsh.insert(row, mh, check_duplication=False)
        self._n_rows += 1
        return row

    def insert_signature(self, signature: np.ndarray) -> int:
        """Index a precomputed signature (from `sketch_texts`) without querying first; return its row."""
        return self._insert(self._wrap(signature))

    def match_signature(self, signature: np.ndarray) -> list[tuple[int, float]]:
        """Rows whose estimated Jaccard with `signature` reaches the threshold, best first; inserts nothing."""
        return self._matches(self._wrap(signature))

    def signature(self, row: int) -> np.ndarray:
        return self._sigs[row]

    def release_buckets(self) -> None:
        """Free the LSH buckets (most of the index's memory), keeping the signatures for `signature`."""
        self._lsh.hashtables = [_CompactSetStorage() for _ in range(self._lsh.b)]

    def add(self, key: str, text: str) -> list[str]:
        """Insert `text` under `key`; return the keys of already-inserted texts whose estimated Jaccard with
        it is >= threshold, best first. A text without words cannot be compared: it is not indexed and
        returns []."""
        if key in self._key_rows:
            raise ValueError(f"key {key!r} is already in the index")
        mh = self._sketch(_prepare(text)[1])
        if mh is None:
            return []
        found = self._matches(mh)
        self._key_rows[key] = self._insert(mh)
        self._keys.append(key)
        return [self._keys[r] for r, _ in found]

    def query(self, text: str) -> list[tuple[str, float]]:
        """Near-duplicates of `text` in the index as (key, estimated Jaccard), best first; inserts nothing."""
        mh = self._sketch(_prepare(text)[1])
        if mh is None:
            return []
        return [(self._keys[r], est) for r, est in self._matches(mh)]


def find_near_duplicates(
    texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD, num_perm: int = DEFAULT_NUM_PERM
) -> list[tuple[int, int, float]]:
    """(earlier index, later index, Jaccard) for every text that duplicates an earlier one, in order of the
    later index.

    Each later text is reported once, against its best earlier match (the earliest on ties). Exact
    duplicates (equal `dedup_key`) are reported with 1.0 against their first occurrence and are not
    indexed again, so memory grows with the number of distinct texts (about 2.4 KB each at the defaults;
    the texts themselves are not kept). Inputs of 50,000 texts or more are hashed in a helper process
    while this one runs the LSH index, so a run uses two cores.
    """
    index = NearDupIndex(threshold=threshold, num_perm=num_perm)
    index._reserve(len(texts))
    first_seen: dict[bytes, int] = {}
    row_to_text = array("q")
    out: list[tuple[int, int, float]] = []
    for i, (digest, signature) in enumerate(_signature_stream(texts, num_perm, index.seed)):
        earlier = first_seen.setdefault(digest, i)
        if earlier != i:
            out.append((earlier, i, 1.0))
            continue
        if signature is None:
            continue
        mh = index._wrap(signature)
        found = index._matches(mh)
        index._insert(mh)
        row_to_text.append(i)
        if found:
            # Rows follow text order, so the best row (earliest on ties) is the best earlier text.
            row, est = found[0]
            out.append((row_to_text[row], i, est))
    return out


def cross_contamination(
    train: Sequence[str],
    other: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    num_perm: int = DEFAULT_NUM_PERM,
) -> list[tuple[int, int, float]]:
    """(train index, other index, Jaccard) for every train text that equals (1.0) or near-duplicates an
    `other` text, e.g. eval items leaking into training data. All matching pairs, sorted.

    The `other` side (usually the smaller, held-out one) is indexed and the train texts stream past it, so
    memory grows with the held-out set only. The estimate is symmetric, so the pairs are the same either way.
    """
    index = NearDupIndex(threshold=threshold, num_perm=num_perm)
    index._reserve(len(other))
    by_digest: dict[bytes, list[int]] = {}
    row_to_other = array("q")
    for j, (digest, signature) in enumerate(_signature_stream(other, num_perm, index.seed)):
        by_digest.setdefault(digest, []).append(j)
        if signature is not None:
            index._insert(index._wrap(signature))
            row_to_other.append(j)
    hits: dict[tuple[int, int], float] = {}
    if not row_to_other and not by_digest:
        return []
    for i, (digest, signature) in enumerate(_signature_stream(train, num_perm, index.seed)):
        for j in by_digest.get(digest, ()):
            hits[(i, j)] = 1.0
        if signature is None:
            continue
        for row, est in index.match_signature(signature):
            hits.setdefault((i, row_to_other[row]), est)
    return [(i, j, est) for (i, j), est in sorted(hits.items())]
