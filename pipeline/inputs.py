"""Training inputs on any fsspec URL: folders of images, list files and tar shards.

``data.train`` names one of:

- a folder or prefix, listed recursively (ImageNet's ``train/<wnid>/*.JPEG`` included); image
  files become keys, and ``.tar`` files found there are expanded into their image members;
- a list file: ``.txt`` / ``.lst`` with one URI per line, or ``.parquet`` with a ``uri`` column;
  entries may be images, whole ``.tar`` shards or ``<tar-uri>#<member>`` keys, and relative
  entries are resolved against the list file's folder;
- one WebDataset-style ``.tar`` shard.

A tar member's key is ``<tar-uri>#<member name>``; its byte span inside the tar is found once
when planning, so workers fetch each member with one ranged read instead of scanning the tar.
The plan is deterministic: folders are sorted, members keep their order in the archive, list
files keep their line order.
"""

from __future__ import annotations

import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from zeroseg import storage

LIST_SUFFIXES = (".txt", ".lst")
PARQUET_SUFFIX = ".parquet"
TAR_SUFFIX = ".tar"
MEMBER_SEP = "#"
# Tar headers are read through ranged reads of this size: small enough that indexing a tar of
# large images does not download it, large enough to hold the headers of several small images.
TAR_INDEX_BLOCK = 1 << 20
TAR_INDEX_THREADS = 8


@dataclass(frozen=True)
class InputPlan:
    """Keys in row order; ``spans[i]`` is ``[offset, size]`` of a tar member, else ``None``."""

    kind: str
    keys: list[str]
    spans: list[list[int] | None]

    @property
    def has_spans(self) -> bool:
        return any(s is not None for s in self.spans)


def input_kind(uri: str) -> str:
    """``list`` / ``parquet`` / ``tar`` from the suffix, else ``folder``."""
    lower = storage.normalize(uri).lower()
    if lower.endswith(LIST_SUFFIXES):
        return "list"
    if lower.endswith(PARQUET_SUFFIX):
        return "parquet"
    if lower.endswith(TAR_SUFFIX):
        return "tar"
    return "folder"


def is_image_name(name: str) -> bool:
    return name.lower().endswith(storage.IMAGE_EXTENSIONS)


def split_member(key: str) -> tuple[str, str] | None:
    """``(tar_uri, member)`` for a tar-member key, else ``None``."""
    i = key.lower().find(TAR_SUFFIX + MEMBER_SEP)
    if i < 0:
        return None
    cut = i + len(TAR_SUFFIX)
    return key[:cut], key[cut + 1 :]


def _resolve(entry: str, base: str) -> str:
    """A list entry as a full URI: absolute paths and URLs as given, the rest below ``base``."""
    if storage.has_protocol(entry) or os.path.isabs(entry):
        return storage.normalize(entry)
    return storage.join(base, entry)


def _parent(uri: str) -> str:
    uri = storage.normalize(uri)
    return uri.rsplit("/", 1)[0] if storage.has_protocol(uri) else os.path.dirname(uri)


def tar_members(tar_uri: str) -> list[tuple[str, int, int]]:
    """``(member, offset, size)`` of the image members of an uncompressed tar, in archive
    order. Only the headers are read (tarfile seeks over member data)."""
    fs, path = storage.fs_and_path(tar_uri)

    def scan() -> list[tuple[str, int, int]]:
        found = []
        with fs.open(path, "rb", block_size=TAR_INDEX_BLOCK) as f:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    if info.isfile() and is_image_name(info.name):
                        found.append((info.name, info.offset_data, info.size))
        return found

    try:
        return storage.with_retries(scan, f"indexing {tar_uri}")
    except tarfile.TarError as exc:
        raise ValueError(f"data.train: {tar_uri} is not a readable tar: {exc}") from None


def _list_entries(uri: str, kind: str) -> list[str]:
    base = _parent(uri)
    if kind == "list":
        text = storage.read_bytes(uri).decode("utf-8")
        lines = [line.strip() for line in text.splitlines()]
        return [_resolve(line, base) for line in lines if line and not line.startswith("#")]
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(uri)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    if "uri" in table.column_names:
        column = table.column("uri")
    elif table.num_columns == 1:
        column = table.column(0)
    else:
        raise ValueError(
            f"data.train: {uri} has no 'uri' column (columns: {', '.join(table.column_names)})"
        )
    return [_resolve(str(v), base) for v in column.to_pylist() if v]


def plan_inputs(uri: str) -> InputPlan:
    """The deterministic list of image keys (and tar spans) that ``data.train`` names."""
    kind = input_kind(uri)
    if kind == "folder":
        exts = (*storage.IMAGE_EXTENSIONS, TAR_SUFFIX)
        entries = storage.list_files(uri, exts)
    elif kind == "tar":
        entries = [storage.normalize(uri)]
    else:
        entries = _list_entries(uri, kind)
    # Whole tars and the tars that member keys point into are indexed once each, in parallel.
    tars = sorted(
        {e for e in entries if e.lower().endswith(TAR_SUFFIX)}
        | {m[0] for e in entries if (m := split_member(e))}
    )
    with ThreadPoolExecutor(max(1, min(TAR_INDEX_THREADS, len(tars)))) as pool:
        index = dict(zip(tars, pool.map(tar_members, tars), strict=True))
    by_name: dict[str, dict[str, list[int]]] = {}
    keys: list[str] = []
    spans: list[list[int] | None] = []
    for entry in entries:
        if entry.lower().endswith(TAR_SUFFIX):
            for member, offset, size in index[entry]:
                keys.append(f"{entry}{MEMBER_SEP}{member}")
                spans.append([offset, size])
        elif (m := split_member(entry)) is not None:
            if m[0] not in by_name:
                by_name[m[0]] = {name: [o, s] for name, o, s in index[m[0]]}
            span = by_name[m[0]].get(m[1])
            if span is None:
                raise ValueError(f"data.train: {m[0]} has no image member {m[1]!r}")
            keys.append(entry)
            spans.append(span)
        else:
            keys.append(entry)
            spans.append(None)
    if not keys:
        raise FileNotFoundError(
            f"no images ({', '.join(storage.IMAGE_EXTENSIONS)}) or .tar shards of images "
            f"in data.train={uri}"
        )
    return InputPlan(kind, keys, spans)


def read_input(key: str, span: list[int] | None = None) -> bytes:
    """The encoded bytes of one planned key: a whole file, or one ranged read of a tar member."""
    if span is None:
        return storage.read_bytes(key)
    member = split_member(key)
    if member is None:
        raise ValueError(f"{key} has a tar span but is not a <tar>#<member> key")
    offset, size = span
    if size == 0:
        return b""
    fs, path = storage.fs_and_path(member[0])
    return storage.with_retries(
        lambda: fs.cat_file(path, start=offset, end=offset + size), f"reading {key}"
    )


PLAN_TABLE = "plan.parquet"


def write_plan_table(uri: str, plan: InputPlan, rows_per_shard: int) -> None:
    """The plan's keys (and tar spans) as Parquet with one row group per extraction shard, so a
    worker reads only its shard's keys, however large the dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = [s[0] if s is not None else None for s in plan.spans]
    sizes = [s[1] if s is not None else None for s in plan.spans]
    table = pa.table(
        {
            "key": pa.array(plan.keys, pa.string()),
            "offset": pa.array(offsets, pa.int64()),
            "size": pa.array(sizes, pa.int64()),
        }
    )
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, row_group_size=rows_per_shard)
    storage.write_bytes(uri, buf.getvalue().to_pybytes())


class PlanTable:
    """Reads one shard's keys and spans from ``plan.parquet`` (one row group per shard)."""

    def __init__(self, uri: str):
        import pyarrow.parquet as pq

        fs, path = storage.fs_and_path(uri)
        self._file = storage.with_retries(lambda: fs.open(path, "rb"), f"opening {uri}")
        self._pq = pq.ParquetFile(self._file)
        self.num_shards = self._pq.num_row_groups

    def shard(self, shard: int) -> tuple[list[str], list[list[int] | None]]:
        """``(keys, spans)`` of the rows of ``shard``, in row order."""
        t = self._pq.read_row_group(shard).to_pydict()
        spans = [None if o is None else [o, s] for o, s in zip(t["offset"], t["size"], strict=True)]
        return t["key"], spans

    def close(self) -> None:
        self._file.close()
