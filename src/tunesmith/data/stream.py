"""The data stage at any size: read -> validate -> clean -> dedup -> split -> contamination -> split files.

Memory is bounded by the *kept* examples' dedup state, never by the examples themselves: rows stream
through in chunks, each kept example is written to a spool file on disk at once, and what stays in memory
per kept example is its exact-key digest (16 bytes), its MinHash signature (512 bytes) and LSH bucket
entries (~1.3 KB), its label id and its source position. The split is decided on indices; a second
sequential pass over the spool writes the split files.

The per-row work (JSON parsing, validation, normalisation, PII, hashing) is independent between rows and
runs in worker processes on large inputs; the order-dependent decisions (is this a duplicate of something
kept earlier?) run here, chunk by chunk in input order, so the result is the same with or without workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from array import array
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from tunesmith.config import CleanConfig, ColumnsConfig, RunConfig
from tunesmith.data.clean import (
    CleanReport,
    Deduper,
    ExampleCleaner,
    SideRule,
    Sketch,
    Sketches,
    dedup_parts,
    sketch_examples,
)
from tunesmith.data.formats import Example, RowError, example_from_row, example_to_row, row_to_example
from tunesmith.data.issues import DataError, DataIssue
from tunesmith.data.readers import RawRow, iter_files, iter_rows
from tunesmith.data.split import split_three
from tunesmith.data.validate import MIN_EXAMPLES
from tunesmith.io import usable_cpus

CHUNK_ROWS = 2048
# Rows read before worker processes are started: below this, starting them (a second or more each: they
# import numpy and datasketch) costs more than they save.
POOL_AFTER_ROWS = 40_000
ISSUES_KEPT_PER_KIND = 200  # the first lines of each kind are listed; all are counted
LISTED_PAIRS = 50
_START_METHOD = "spawn"  # fork could deadlock on threads held by torch or tokenizers


# ---------------------------------------------------------------------------------------------- workers
@dataclass
class _ChunkOut:
    issues: list[DataIssue] = field(default_factory=list)
    # one per example after parsing: (source, normalisation changed it, degenerate reason, PII kinds, kept)
    records: list[tuple[str, bool, str | None, list[str], bool]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # prepared JSON of each kept example
    labels: list[str | None] = field(default_factory=list)
    parts: list[tuple[str, str]] = field(default_factory=list)  # (prompt, answer) of each kept example
    sketches: Sketches | None = None


def _process_chunk(
    rows: list[RawRow],
    fmt: str,
    system_prompt: str | None,
    columns: ColumnsConfig,
    cfg: CleanConfig,
    num_perm: int,
    report_only: bool = False,
) -> _ChunkOut:
    """Parse, validate and clean one chunk of rows and sketch the kept ones; no cross-row state."""
    cleaner = ExampleCleaner(cfg, report_only)
    out = _ChunkOut()
    kept: list[Example] = []
    for raw in rows:
        raw = raw.parse()
        if raw.issue is not None:
            out.issues.append(raw.issue)
            continue
        source = f"{raw.file}:{raw.line}"
        try:
            ex = row_to_example(raw.row, fmt, source, system_prompt, columns)
        except RowError as e:
            out.issues.append(DataIssue(raw.file, raw.line, e.field, e.reason, e.kind))
            continue
        c = cleaner(ex)
        out.records.append((source, c.changed, c.degenerate, c.pii, c.example is not None))
        if c.example is not None:
            out.lines.append(json.dumps(example_to_row(c.example), ensure_ascii=False))
            out.labels.append(c.example.label)
            out.parts.append(dedup_parts(c.example))
            kept.append(c.example)
    out.sketches = sketch_examples(kept, num_perm)
    return out


def _chunks(paths: Sequence[str]) -> Iterator[list[RawRow]]:
    buf: list[RawRow] = []
    for p in paths:
        root = Path(p)
        for path in iter_files(root):
            display = str(path.relative_to(root.parent)) if root.is_dir() else path.name
            for raw in iter_rows(path, display, parse=False):
                buf.append(raw)
                if len(buf) == CHUNK_ROWS:
                    yield buf
                    buf = []
    if buf:
        yield buf


def _workers() -> int:
    return max(0, min(usable_cpus(), 8))


def _chunk_results(
    paths: Sequence[str],
    fmt: str,
    system_prompt: str | None,
    columns: ColumnsConfig,
    cfg: CleanConfig,
    num_perm: int,
    report_only: bool = False,
) -> Iterator[tuple[int, _ChunkOut]]:
    """(rows in chunk, result) in input order; worker processes once the input proves large."""
    pool: ProcessPoolExecutor | None = None
    pending: deque[tuple[int, Future[_ChunkOut]]] = deque()
    n_workers = _workers()
    args = (fmt, system_prompt, columns, cfg, num_perm, report_only)
    seen = 0
    try:
        for rows in _chunks(paths):
            seen += len(rows)
            if pool is None and n_workers >= 2 and seen > POOL_AFTER_ROWS:
                pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context(_START_METHOD))
            if pool is None:
                yield len(rows), _process_chunk(rows, *args)
                continue
            pending.append((len(rows), pool.submit(_process_chunk, rows, *args)))
            while len(pending) > 2 * n_workers:  # bounds memory held by read-ahead and unconsumed results
                n, fut = pending.popleft()
                yield n, fut.result()
        while pending:
            n, fut = pending.popleft()
            yield n, fut.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------- one stream
class _Issues:
    def __init__(self) -> None:
        self.kept: list[DataIssue] = []
        self.totals: Counter[str] = Counter()

    def add(self, issue: DataIssue) -> None:
        self.totals[issue.kind] += 1
        if self.totals[issue.kind] <= ISSUES_KEPT_PER_KIND:
            self.kept.append(issue)

    def __bool__(self) -> bool:
        return bool(self.totals)


class _Sources:
    """'file:line' of each kept example in 12 bytes instead of a string."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self._file_ids: dict[str, int] = {}
        self.file_of = array("I")
        self.line_of = array("Q")

    def append(self, source: str) -> None:
        file, _, line = source.rpartition(":")
        fid = self._file_ids.setdefault(file, len(self.files))
        if fid == len(self.files):
            self.files.append(file)
        self.file_of.append(fid)
        self.line_of.append(int(line))

    def __getitem__(self, i: int) -> str:
        return f"{self.files[self.file_of[i]]}:{self.line_of[i]}"


@dataclass
class CleanedStream:
    """One split's files after validation and cleaning: kept examples spooled to `spool`, in order.
    `conflicted`: kept examples on either side of a conflicting pair."""

    spool: Path
    read: int
    report: CleanReport
    dedup: Deduper
    sources: _Sources
    label_ids: array[int]  # per kept example, -1 without a label
    label_names: list[str]
    conflicted: set[int] = field(default_factory=set)

    @property
    def n(self) -> int:
        return self.dedup.kept

    def label(self, i: int) -> str | None:
        lid = self.label_ids[i]
        return None if lid < 0 else self.label_names[lid]


def clean_stream(
    paths: Sequence[str],
    fmt: str,
    system_prompt: str | None,
    columns: ColumnsConfig,
    cfg: CleanConfig,
    spool: Path,
    issues: _Issues,
    progress: Any = None,
    report_only: bool = False,
) -> CleanedStream:
    """`report_only`: the user's own evaluation files; findings are counted and listed, every row kept."""
    dedup = Deduper(cfg, keep_all=report_only)
    report = CleanReport(mode="report" if report_only else "clean")
    sources = _Sources()
    label_ids = array("i")
    label_names: list[str] = []
    label_index: dict[str, int] = {}
    conflicted: set[int] = set()
    listed_firsts: dict[int, str] = {}  # kept example -> its source, for the listed conflicts
    read = 0
    with spool.open("w", encoding="utf-8") as f:
        chunks = _chunk_results(paths, fmt, system_prompt, columns, cfg, dedup.num_perm, report_only)
        for n_rows, out in chunks:
            for issue in out.issues:
                issues.add(issue)
            assert out.sketches is not None
            k = 0
            for source, changed, degenerate, pii, kept in out.records:
                read += 1
                report.record(source, changed, degenerate, pii, kept)
                if not kept:
                    continue
                verdict = dedup.check(out.sketches.item(k))
                if verdict.duplicate is not None:
                    reason, of, est = verdict.duplicate
                    report.record_duplicate(source, reason, sources[of], est)
                if verdict.duplicate is None or report_only:
                    i = dedup.kept - 1
                    for first, est in verdict.conflicts:
                        if report.record_conflict(sources[first], source, est, out.parts[k]):
                            listed_firsts[first] = sources[first]
                        conflicted.update((first, i))
                    f.write(out.lines[k])
                    f.write("\n")
                    sources.append(source)
                    label = out.labels[k]
                    if label is None:
                        label_ids.append(-1)
                    else:
                        label_ids.append(label_index.setdefault(label, len(label_names)))
                        if label_ids[-1] == len(label_names):
                            label_names.append(label)
                k += 1
            if progress is not None:
                progress(n_rows)
    report.kept = dedup.kept
    report.fill_conflicts(_parts_from_spool(spool, listed_firsts))
    return CleanedStream(spool, read, report, dedup, sources, label_ids, label_names, conflicted)


def _parts_from_spool(spool: Path, wanted: Mapping[int, str]) -> dict[str, tuple[str, str]]:
    """(prompt, answer) of the kept examples `wanted` (index -> source), read back from the spool: only
    the few listed conflicts need their texts, so none are held in memory while streaming."""
    found: dict[str, tuple[str, str]] = {}
    if not wanted:
        return found
    with spool.open(encoding="utf-8") as f:
        for k, line in enumerate(f):
            if k in wanted:
                found[wanted[k]] = dedup_parts(example_from_row(json.loads(line)))
                if len(found) == len(wanted):
                    break
    return found


# ---------------------------------------------------------------------------------------- contamination
@dataclass
class _EvalSide:
    """The held-out examples indexed for the contamination check: their prompts in an LSH index, banded for
    the check's threshold; a train example overlaps one when both sides match (`SideRule.sides_match`)."""

    rule: SideRule
    names: list[tuple[str, str]] = field(default_factory=list)  # (split, source) per indexed example
    sketches: list[Sketch] = field(default_factory=list)
    by_prompt: dict[bytes, list[int]] = field(default_factory=dict)
    row_to_item: array[int] = field(default_factory=lambda: array("q"))

    def __post_init__(self) -> None:
        from tunesmith.data.dedup import NearDupIndex

        self.index = NearDupIndex(threshold=self.rule.threshold)

    def add(self, split: str, source: str, sketch: Sketch) -> None:
        item = len(self.names)
        self.names.append((split, source))
        self.sketches.append(sketch)
        self.by_prompt.setdefault(sketch.prompt_digest, []).append(item)
        if sketch.prompt_sig is not None:
            self.index.insert_signature(sketch.prompt_sig)
            self.row_to_item.append(item)

    def matches(self, s: Sketch) -> dict[int, float]:
        hits = dict.fromkeys(self.by_prompt.get(s.prompt_digest, ()), 1.0)
        if s.prompt_sig is not None:
            for row, est in self.index.match_signature(s.prompt_sig):
                hits.setdefault(self.row_to_item[row], est)
        return {
            item: est
            for item, est in hits.items()
            if self.rule.sides_match(s, self.sketches[item], est, loose=True)
        }


def _extra_eval(
    paths: Sequence[str], system_prompt: str | None, columns: ColumnsConfig, side: _EvalSide, issues: _Issues
) -> int:
    from tunesmith.data.validate import load_examples

    examples, bad = load_examples(paths, "auto", system_prompt, columns)
    for issue in bad:
        issues.add(issue)
    sketches = sketch_examples(examples, side.index.num_perm)
    for k, e in enumerate(examples):
        side.add("extra_eval", e.source, sketches.item(k))
    return len(examples)


# ------------------------------------------------------------------------------------------ whole stage
@dataclass
class SplitFiles:
    """The prepared split files and the stage's report."""

    dir: Path
    counts: dict[str, int]
    report: dict[str, Any]

    def path(self, split: str) -> Path:
        return self.dir / f"{split}.jsonl"

    def load(self, split: str) -> list[Example]:
        return read_split(self.path(split))


def read_split(path: Path) -> list[Example]:
    with path.open(encoding="utf-8") as f:
        return [example_from_row(json.loads(line)) for line in f if line.strip()]


def _write_lines(src: Path, targets: Mapping[int, IO[str]], assign: Any) -> None:
    """Copy line k of `src` to targets[assign(k)]; assign returns -1 to skip a line."""
    with src.open(encoding="utf-8") as f:
        for k, line in enumerate(f):
            t = assign(k)
            if t >= 0:
                targets[t].write(line)


def build_splits(cfg: RunConfig, out_dir: Path, progress: Any = None) -> SplitFiles:
    """Validate, clean, dedup, split and check contamination; write `out_dir/{train,val,test}.jsonl`.

    Raises DataError (every problem counted, the first lines of each kind listed) before writing anything
    to `out_dir`. `progress(rows)` is called as rows are consumed.
    """
    d = cfg.data
    issues = _Issues()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tunesmith-data-", dir=out_dir.parent))
    try:
        streams: dict[str, CleanedStream] = {}
        for name, paths in (("train", d.train), ("val", d.val), ("test", d.test)):
            if paths:
                streams[name] = clean_stream(
                    paths,
                    d.format,
                    d.system_prompt,
                    d.columns,
                    d.clean,
                    work / f"{name}.spool",
                    issues,
                    progress,
                    report_only=name != "train" and d.clean.eval_files == "keep",
                )
        if issues:
            raise DataError(issues.kept, totals=issues.totals)
        train = streams["train"]
        _act_on_conflicts(d.clean.conflicts, streams)
        report: dict[str, Any] = {
            "read": {k: (streams[k].read if k in streams else 0) for k in ("train", "val", "test")},
            "clean": {k: s.report.as_dict() for k, s in streams.items()},
        }

        # ---- split (on indices; the examples stay in the spool)
        n = train.n
        assign = np.zeros(n, dtype=np.int8)  # 0 train, 1 val, 2 test
        dropped = sorted(train.conflicted) if d.clean.conflicts == "drop" else []
        assign[np.asarray(dropped, dtype=np.int64)] = -1
        if not d.val or not d.test:
            labelled = n > 0 and min(train.label_ids) >= 0
            stratify = d.split.stratify and labelled and len(train.label_names) > 1
            _, v, t = split_three(
                np.flatnonzero(assign == 0).tolist(),
                val=0.0 if d.val else d.split.val,
                test=0.0 if d.test else d.split.test,
                seed=d.split.seed,
                stratify_by=(lambda i: train.label_names[train.label_ids[i]]) if stratify else None,
            )
            assign[np.asarray(v, dtype=np.int64)] = 1
            assign[np.asarray(t, dtype=np.int64)] = 2
            report["split"] = {"from_train_file": True, "stratified": stratify, "seed": d.split.seed}
        else:
            report["split"] = {"from_train_file": False}

        # ---- contamination: held-out side indexed, train side streamed past it
        if train.dedup.near is not None:
            train.dedup.near.release_buckets()  # the dedup buckets are done; their signatures stay
        side = _EvalSide(SideRule(d.contamination.threshold, d.clean.near_dup_min_words))
        for name in ("val", "test"):
            if name in streams:
                s = streams[name]
                for i in range(s.n):
                    side.add(name, s.sources[i], s.dedup.sketch(i))
            else:
                for i in np.flatnonzero(assign == (1 if name == "val" else 2)).tolist():
                    side.add(name, train.sources[i], train.dedup.sketch(i))
        n_extra = _extra_eval(d.contamination.extra_eval_files, d.system_prompt, d.columns, side, issues)
        if issues:
            raise DataError(issues.kept, totals=issues.totals)
        pairs: list[dict[str, Any]] = []
        n_pairs = 0
        contaminated: set[int] = set()
        if side.names:
            for i in np.flatnonzero(assign == 0).tolist():
                hits = side.matches(train.dedup.sketch(i))
                for item, est in sorted(hits.items()):
                    n_pairs += 1
                    contaminated.add(i)
                    if len(pairs) < LISTED_PAIRS or d.contamination.action == "error":
                        split, source = side.names[item]
                        pairs.append(
                            {
                                "split": split,
                                "train": train.sources[i],
                                "eval": source,
                                "jaccard": round(est, 3),
                            }
                        )
        report["contamination"] = {
            "pairs": n_pairs,
            "train_examples": len(contaminated),
            "action": d.contamination.action,
            "extra_eval_examples": n_extra,
            "listed": pairs[:LISTED_PAIRS],
        }
        if n_pairs and d.contamination.action == "error":
            raise DataError(
                [
                    DataIssue(
                        *_file_line(p["train"]),
                        "",
                        f"overlaps {p['split']} example {p['eval']} (Jaccard {p['jaccard']})",
                        "contaminated",
                    )
                    for p in pairs
                ]
            )
        if contaminated and d.contamination.action == "drop":
            assign[np.fromiter(contaminated, dtype=np.int64, count=len(contaminated))] = -1

        counts = {
            "train": int((assign == 0).sum()),
            "val": streams["val"].n if "val" in streams else int((assign == 1).sum()),
            "test": streams["test"].n if "test" in streams else int((assign == 2).sum()),
        }
        if counts["train"] < MIN_EXAMPLES:
            raise DataError(
                [
                    DataIssue(
                        "train split",
                        0,
                        "",
                        f"has {counts['train']} examples; at least {MIN_EXAMPLES} are needed",
                        "too_few",
                    )
                ]
            )

        # ---- write: one pass over each spool, then the folder appears whole
        staged = work / "out"
        staged.mkdir()
        names = ("train", "val", "test")
        files = {k: (staged / f"{name}.jsonl").open("w", encoding="utf-8") for k, name in enumerate(names)}
        try:
            _write_lines(train.spool, files, lambda k: int(assign[k]))
            for k, name in ((1, "val"), (2, "test")):
                if name in streams:
                    _write_lines(streams[name].spool, files, lambda _i, k=k: k)
        finally:
            for fh in files.values():
                fh.close()
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
        return SplitFiles(out_dir, counts, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _act_on_conflicts(action: str, streams: Mapping[str, CleanedStream]) -> None:
    """`data.clean.conflicts`: `error` stops with every listed pair; `drop` is applied to the train files
    (the split skips those examples), never to evaluation files kept as given."""
    if action == "error":
        pairs = [(name, p) for name, s in streams.items() for p in s.report.conflict_pairs]
        if pairs:
            raise DataError(
                [
                    DataIssue(
                        *_file_line(p["second"]),
                        "",
                        f"has a near-identical prompt to {p['first']} (Jaccard {p['jaccard']}) but another "
                        f"answer: {p['second_answer']!r} vs {p['first_answer']!r}",
                        "conflict",
                    )
                    for _, p in pairs
                ],
                totals={"conflict": sum(s.report.conflicts for s in streams.values())},
            )
    if action == "drop":
        train = streams["train"]
        train.report.conflicts_dropped = len(train.conflicted)


def _file_line(source: str) -> tuple[str, int]:
    file, _, line = source.rpartition(":")
    return file, int(line)


__all__ = ["SplitFiles", "build_splits", "clean_stream", "read_split"]
