"""The results store: Parquet part files, one per committed chunk, that survive any kill.

Layout of a store directory::

    manifest.json                      plan (and its hash), data-source and model fingerprints
    parts/r0001-<run>-c000042.parquet  one chunk of rank 1's rows; never touched by another rank
    maps/r0001-<run>-c000042.npz       the chunk's maps by "<method>|<id>|<target>" (plan.save_maps)
    corrupt/                           parts that failed to read, moved aside (their items are redone)

Why Parquet (via ``pyarrow``, installed with transformer-lens): columnar, typed (NaN stays NaN, lists
hold curves), compressed, readable by pandas/polars/DuckDB/Spark, and a file is self-checking — its
footer (magic bytes, schema, row-group offsets) must parse, so a truncated file is detected on read.

Atomicity: a chunk is written to ``parts/.tmp-...``, flushed and ``fsync``-ed, then ``os.replace``-d to
its final name and the directory ``fsync``-ed. A chunk is thus either wholly present or absent; a kill
leaves at most a temporary file, which is ignored (and removed by its rank at the next start).
Every part records, in its Parquet metadata, the plan hash and the ids of the items it covers (also
items that gave no unit), and every row carries the plan hash: a part of another plan is refused.

Resuming: `Store.committed_items` lists the items of every readable part; the run skips them. A part
that does not read back (truncated, corrupt, wrong schema or row count) is reported, moved to
``corrupt/`` by rank 0 before any rank writes, and its items are computed again.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "caap_lens.evaluation/1"
META_KEY = b"caap_lens"


class StoreError(RuntimeError):
    """A store that cannot be used as asked."""


class PlanMismatch(StoreError):
    """The store was written under another plan (or data source, or model)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass
class ReadReport:
    """What reading the parts found: item ids per readable part, and the parts that did not read."""

    items: dict[str, list[str]] = field(default_factory=dict)
    corrupt: dict[str, str] = field(default_factory=dict)


class Store:
    """A results store directory (see the module docstring).

    Args:
        path: The directory (created on `open`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.parts = self.path / "parts"
        self.maps = self.path / "maps"
        self.manifest_path = self.path / "manifest.json"
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._seq = 0

    # -------------------------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StoreError(f"{self.manifest_path} is unreadable ({err}); it is not a results store") from None

    def create_or_check(self, manifest: dict[str, Any], *, create: bool) -> dict[str, Any]:
        """Checks ``manifest`` against the stored one; writes it if absent and ``create`` (rank 0).

        Raises:
            PlanMismatch: another plan hash, data source or model.
        """
        found = self.read_manifest()
        if found is None:
            if not create:
                raise StoreError(f"{self.path} has no manifest (rank 0 did not create it)")
            self.path.mkdir(parents=True, exist_ok=True)
            self.parts.mkdir(exist_ok=True)
            atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
            return manifest
        if found.get("format") != FORMAT:
            raise StoreError(f"{self.path} is not a caap_lens results store (format {found.get('format')!r})")
        if found.get("plan_hash") != manifest["plan_hash"]:
            raise PlanMismatch(
                f"store {self.path} was written under plan {found.get('plan_hash')}, this plan is "
                f"{manifest['plan_hash']}: use another store directory (results of two plans are never mixed)")
        for key, what in (("source", "data source"), ("model", "model")):
            if found.get(key, {}).get("fingerprint") != manifest.get(key, {}).get("fingerprint"):
                raise PlanMismatch(
                    f"store {self.path} was written for another {what} ({found.get(key, {}).get('name')!r}, "
                    f"fingerprint {found.get(key, {}).get('fingerprint')}); use another store directory")
        return found

    # ----------------------------------------------------------------------------------- parts
    def part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(p for p in self.parts.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))

    def read_part(self, path: Path, plan_hash: str | None = None) -> Any:
        """The part's table, fully read and checked. Raises `StoreError` if it is not sound."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        except (OSError, pa.ArrowException, ValueError) as err:
            raise StoreError(f"unreadable ({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
        if meta.get("n_rows") != table.num_rows or "items" not in meta:
            raise StoreError(f"metadata says {meta.get('n_rows')} rows, file has {table.num_rows}")
        if plan_hash is not None and meta.get("plan_hash") != plan_hash:
            raise StoreError(f"written under plan {meta.get('plan_hash')}, not {plan_hash}")
        return table

    def scan(self, plan_hash: str | None = None) -> ReadReport:
        """Reads every part: the items each covers, and the parts that failed (with why)."""
        report = ReadReport()
        for p in self.part_files():
            try:
                table = self.read_part(p, plan_hash)
            except StoreError as err:
                report.corrupt[p.name] = str(err)
                continue
            report.items[p.name] = json.loads(table.schema.metadata[META_KEY])["items"]
        return report

    def quarantine(self, names: list[str]) -> None:
        """Moves corrupt parts (and their maps) to ``corrupt/`` (rank 0, before any rank writes)."""
        if not names:
            return
        bad = self.path / "corrupt"
        bad.mkdir(exist_ok=True)
        for name in names:
            src = self.parts / name
            if src.exists():
                os.replace(src, bad / f"{name}.{self.run_id}")
            maps = self.maps / (Path(name).stem + ".npz")
            if maps.exists():
                os.replace(maps, bad / f"{maps.name}.{self.run_id}")
        _fsync_dir(self.parts)

    def remove_own_temporaries(self, rank: int) -> None:
        """Deletes this rank's leftover temporary files of a killed run."""
        for folder in (self.parts, self.maps):
            if folder.is_dir():
                for p in folder.glob(f".tmp-r{rank:04d}-*"):
                    p.unlink(missing_ok=True)

    def write_chunk(self, rank: int, columns: dict[str, Any], schema: Any, meta: dict[str, Any],
                    maps: dict[str, Any] | None = None) -> Path:
        """Commits one chunk of rows atomically; returns the part's path."""
        import io

        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._seq += 1
        stem = f"r{rank:04d}-{self.run_id}-c{self._seq:06d}"
        table = pa.table(columns, schema=schema)
        meta = dict(meta, n_rows=table.num_rows)
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        if maps:
            self.maps.mkdir(exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **maps)
            tmp = self.maps / f".tmp-{stem}.npz"
            with open(tmp, "wb") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.maps / f"{stem}.npz")
        final = self.parts / f"{stem}.parquet"
        tmp = self.parts / f".tmp-{stem}.parquet"
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.parts)
        return final

    def read_rows(self, plan_hash: str | None = None) -> tuple[Any, ReadReport]:
        """All rows of the readable parts as one pyarrow Table (None if there are none)."""
        import pyarrow as pa

        report = ReadReport()
        tables = []
        for p in self.part_files():
            try:
                t = self.read_part(p, plan_hash)
            except StoreError as err:
                report.corrupt[p.name] = str(err)
                continue
            report.items[p.name] = json.loads(t.schema.metadata[META_KEY])["items"]
            tables.append(t.replace_schema_metadata(None))
        return (pa.concat_tables(tables, promote_options="default") if tables else None), report
