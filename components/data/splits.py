"""Splits by family and stratum: the rows of one family share a split, and each stratum is split in the shares asked.

A *family* is a group (a row's `group`: a module, a math template, one prompt of a source) joined with every group
whose rows near-duplicate its rows at `data.curate.family_threshold` (templated siblings such as Do-Not-Answer's
"... at Apple" / "... at Bloomberg"): the connected components of "near-duplicates", by union-find over groups. LSH
keys only propose pairs; a pair joins when the share of equal MinHash values (the Jaccard estimate) reaches the
threshold, since a chain of chance key collisions would otherwise join a whole table (prompts sharing a
wrapper such as "In Python, what does ... do?").

A *stratum* is a row's source and category (`stratum_of`). Within each stratum the families, ordered by a seeded
hash of their first group, fill train, val and test by row count: each family goes to the split its
midpoint falls in, so every stratum with enough families has rows in every split, and the shares hold to within
one family. Ordering by hash keeps a family's split where it was when rows are added, unless it sits by a
boundary.

Why not a hash of each group alone (what the curate stage did before): siblings in different groups landed in
different splits, and small categories could miss a split.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xxhash

from components.data.config import Splits
from components.data.minhash import SeenIndex
from components.data.tables import Row

SPLITS = ("train", "val", "test")


def stratum_of(row: Row) -> str:
    """The stratum a row is split within: its `source` and `category` fields, where it has them."""
    return f"{row.get('source', '')}/{row.get('category', '')}"


def signed64(text: str) -> int:
    """A 64-bit hash of `text` in SQLite's signed integer range."""
    return xxhash.xxh64_intdigest(text.encode()) - (1 << 63)


def midpoint_splits(families: Sequence[tuple[int, int]], splits: Splits) -> list[str]:
    """The split of each family of one stratum, given (order key, rows) per family: in order of the key, each
    family takes the split in which the midpoint of its rows, as a share of the stratum's rows, falls. A split with a
    share that no midpoint reached (a large family across a small share) then takes the family whose midpoint is
    nearest its range, from a split that keeps another family."""
    total = sum(rows for _, rows in families)
    ranges = {"train": (0.0, splits.train), "val": (splits.train, splits.train + splits.val)}
    ranges["test"] = (splits.train + splits.val, 1.0)
    assigned, middles = [""] * len(families), [0.0] * len(families)
    before = 0
    for index in sorted(range(len(families)), key=lambda i: families[i][0]):
        rows = families[index][1]
        middles[index] = (before + rows / 2) / total
        assigned[index] = next(s for s in SPLITS if middles[index] < ranges[s][1] or s == "test")
        before += rows
    for split in ("test", "val", "train"):
        low, high = ranges[split]
        if high <= low or split in assigned:
            continue
        donors = [i for i in range(len(families)) if assigned.count(assigned[i]) > 1]
        if donors:
            nearest = min(donors, key=lambda i: max(low - middles[i], middles[i] - high))
            assigned[nearest] = split
    return assigned


class FamilySplitter:
    """Groups joined into families as rows arrive (`add`), then one split per family (`assign`, `split_of`).

    The group names, the LSH keys seen and the rows' MinHash signatures live in SQLite files under `scratch`
    (bounded memory); in memory it holds three machine integers per group (parent, rows, stratum), a hash, and one
    per row (its group).
    """

    def __init__(self, scratch: Path, name: str, seed: int, threshold: float):
        self.groups = SeenIndex(scratch / f"{name}-groups.db")
        self.keys = SeenIndex(scratch / f"{name}-family-keys.db")
        self.signatures = sqlite3.connect(scratch / f"{name}-signatures.db")
        self.signatures.execute("PRAGMA journal_mode=OFF")
        self.signatures.execute("CREATE TABLE sig (row INTEGER PRIMARY KEY, value BLOB)")
        self.threshold = threshold
        self.row_group = array("q")
        self.seed = seed
        self.parent = array("q")
        self.rows = array("q")
        self.stratum = array("l")
        self.order = array("Q")  # a seeded hash of the group's name: the order families fill the splits in
        self.strata: dict[str, int] = {}
        self.assigned: dict[int, str] = {}

    def find(self, code: int) -> int:
        parent = self.parent
        while parent[code] != code:
            parent[code] = parent[parent[code]]
            code = parent[code]
        return code

    def union(self, a: int, b: int) -> None:
        """Join two groups' families; the earlier group stays the root (its stratum and hash stand for the family)."""
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def add(
        self, groups: Sequence[str], strata: Sequence[str], keys: Sequence[Sequence[int]], sigs: np.ndarray
    ) -> list[int]:
        """Register a batch of rows by group, stratum, family LSH keys and MinHash signatures; returns each row's
        group code."""
        hashes = [signed64(group) for group in groups]
        known = self.groups.lookup(hashes)
        codes, new = [], []
        for group, hashed, stratum in zip(groups, hashes, strata, strict=True):
            code = known.get(hashed)
            if code is None:
                code = known[hashed] = len(self.parent)
                self.parent.append(code)
                self.rows.append(0)
                self.stratum.append(self.strata.setdefault(stratum, len(self.strata)))
                self.order.append(xxhash.xxh64_intdigest(f"{self.seed}:{group}".encode()))
                new.append((hashed, code))
            self.rows[code] += 1
            codes.append(code)
        self.groups.add(new)
        first_row = len(self.row_group)
        self.row_group.extend(codes)
        self.signatures.executemany(
            "INSERT INTO sig VALUES (?, ?)", [(first_row + i, sig.tobytes()) for i, sig in enumerate(sigs)]
        )
        owners = self.keys.lookup([k for row_keys in keys for k in row_keys])
        claimed, proposed = [], set()
        for i, row_keys in enumerate(keys):
            for key in row_keys:
                owner = owners.get(int(key))
                if owner is None:
                    owners[int(key)] = first_row + i
                    claimed.append((int(key), first_row + i))
                elif owner != first_row + i:
                    proposed.add((owner, first_row + i))
        self.keys.add(claimed)
        stored = self.stored_signatures(sorted({earlier for earlier, _ in proposed}), sigs.dtype)
        for earlier, row in sorted(proposed):
            if self.row_group[earlier] != self.row_group[row]:
                estimate = float(np.mean(stored[earlier] == sigs[row - first_row]))  # share of equal MinHash values
                if estimate >= self.threshold:
                    self.union(self.row_group[earlier], self.row_group[row])
        return codes

    def stored_signatures(self, rows: Sequence[int], dtype: np.dtype) -> dict[int, np.ndarray]:
        """The stored MinHash signatures of `rows`, read in chunks of SQLite's bound-parameter limit."""
        found: dict[int, np.ndarray] = {}
        for start in range(0, len(rows), 900):
            chunk = rows[start : start + 900]
            query = f"SELECT row, value FROM sig WHERE row IN ({','.join('?' * len(chunk))})"
            found.update(
                (row, np.frombuffer(value, dtype=dtype)) for row, value in self.signatures.execute(query, chunk)
            )
        return found

    def assign(self, splits: Splits) -> dict[str, float]:
        """Give every family its split (midpoint_splits within each stratum); returns how many families there are
        and the rows of the largest, for the curation report."""
        members: dict[int, int] = defaultdict(int)
        for code in range(len(self.parent)):
            members[self.find(code)] += self.rows[code]
        by_stratum: dict[int, list[int]] = defaultdict(list)
        for root in members:
            by_stratum[self.stratum[root]].append(root)
        for roots in by_stratum.values():
            chosen = midpoint_splits([(self.order[r], members[r]) for r in roots], splits)
            self.assigned.update(zip(roots, chosen, strict=True))
        largest = max(members.values(), default=0)
        return {"families": float(len(members)), "largest_family_rows": float(largest)}

    def split_of(self, code: int) -> str:
        return self.assigned[self.find(code)]

    def close(self) -> None:
        self.groups.close()
        self.keys.close()
        self.signatures.close()


def interleaved(rows: Sequence[Row], limit: int | None) -> list[Row]:
    """At most `limit` rows (all: None), taken in turn from each stratum in file order, so that a cap keeps every
    source and category in its share rather than the first files' rows."""
    if limit is None or limit >= len(rows):
        return list(rows)
    queues: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        queues[stratum_of(row)].append(row)
    taken: list[Row] = []
    depth = 0
    while len(taken) < limit:
        taken += [queue[depth] for queue in queues.values() if depth < len(queue)][: limit - len(taken)]
        depth += 1
    return taken
