"""One way to talk to storage: fsspec URLs everywhere, local paths included.

Stages never branch on local vs object storage themselves; they join URIs, read and write JSON,
bytes and listings through these helpers, and open Zarr stores through :func:`zarr_store`.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.registry import known_implementations

T = TypeVar("T")

# Transient errors (dropped connections, throttling, timeouts) are retried with backoff; errors
# that a retry cannot fix (missing object, no permission) surface at once.
RETRIES = 4
BACKOFF_S = 0.5
_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def with_retries(fn: Callable[[], T], what: str, retries: int = RETRIES) -> T:
    """Call ``fn``, retrying transient storage errors with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except _PERMANENT:
            raise
        except (OSError, ConnectionError, TimeoutError) as exc:
            if attempt == retries:
                raise OSError(f"{what} failed after {retries + 1} attempts: {exc}") from exc
            time.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def has_protocol(uri: str) -> bool:
    return "://" in uri


class BadURI(ValueError):
    """A storage location that is not what the user can have meant."""


# schemes whose first path part is a bucket / container that must be named
_LOCAL_SCHEMES = ("file", "local", "memory")
_SCHEME_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")


def known_schemes() -> set[str]:
    """Every scheme fsspec can open (built in or registered by an installed package)."""
    return set(known_implementations) | set(fsspec.registry)


def check_uri(uri: str, what: str = "location") -> str:
    """Refuse a location that would silently go somewhere else: a scheme and no bucket
    (``s3://`` would otherwise become a local folder), a scheme fsspec does not know, or a
    local path that looks like a URI with its slashes missing (``s3:bucket/x``). Returns
    ``uri`` unchanged; the error's ``reason`` says what is wrong without the key."""
    reason = _uri_problem(uri)
    if reason:
        err = BadURI(f"{what}={uri}: {reason}")
        err.reason = f"{uri!r} {reason}"
        raise err
    return uri


def _uri_problem(uri: str) -> str | None:
    target = uri.rsplit("::", 1)[-1]  # a chained URL (simplecache::s3://...) names it last
    if "://" in target:
        scheme, rest = target.split("://", 1)
        if scheme not in known_implementations and scheme not in fsspec.registry:
            common = ", ".join(("s3", "gs", "gcs", "az", "abfs", "file", "memory"))
            return f"has an unknown storage scheme {scheme!r} (fsspec knows {common}, ...)"
        if scheme not in _LOCAL_SCHEMES and not rest.split("/", 1)[0]:
            return f"names no bucket or container after {scheme}://"
        return None
    m = _SCHEME_LIKE.match(target)
    if m:
        return (
            f"looks like a URI without its '//' and would be a local folder named "
            f"{m.group(1) + ':'!r}; write {m.group(1)}://... for object storage or ./{uri} for "
            "a local path"
        )
    return None


def is_local(uri: str) -> bool:
    return not has_protocol(uri) or uri.startswith("file://")


def normalize(uri: str) -> str:
    """Absolute local paths (with ``~`` expanded) or untouched remote URLs."""
    check_uri(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if not has_protocol(uri):
        return os.path.abspath(os.path.expanduser(uri))
    return uri.rstrip("/")


def join(uri: str, *parts: str) -> str:
    uri = normalize(uri)
    if has_protocol(uri):
        return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(uri, *parts)


def fs_and_path(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``uri``. Object stores get no listings cache: markers and
    shard objects come and go from other processes, and a cached listing would make an object
    written since look missing (s3fs answers from it without asking the server)."""
    if is_local(uri):
        return url_to_fs(normalize(uri))
    return url_to_fs(normalize(uri), use_listings_cache=False)


def exists(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)


class NotAFolder(ValueError):
    """An output location that already is a file: writing below it cannot work, and writing
    over it would lose the file."""


def check_output_folder(uri: str, what: str = "output") -> None:
    """Refuse an output folder that is an existing file (``NotAFolder`` naming ``what``)."""
    fs, path = fs_and_path(uri)
    if fs.isfile(path):
        raise NotAFolder(f"{what}={uri} is a file, not a folder: give a folder for the outputs")


def makedirs(uri: str) -> None:
    """Create a local folder. Object stores have no folders, and s3fs's makedirs would create a
    missing bucket: a typo in a bucket name must fail, not make a new bucket."""
    if is_local(uri):
        fs, path = fs_and_path(uri)
        fs.makedirs(path, exist_ok=True)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object; local files go through a temp name + rename so readers never see
    half a file (object stores make a single PUT visible atomically already)."""
    fs, path = fs_and_path(uri)
    if is_local(uri):
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        with_retries(lambda: fs.pipe_file(path, data), f"writing {uri}")


def read_bytes(uri: str) -> bytes:
    fs, path = fs_and_path(uri)
    return with_retries(lambda: fs.cat_file(path), f"reading {uri}")


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


class BadJSON(ValueError):
    """A JSON object on storage that does not parse (truncated, overwritten, not JSON)."""


def read_json(uri: str) -> Any:
    """Parsed JSON; a file that does not parse is a ``BadJSON`` naming it (a bare decoder
    error would not say which of a stage's many small files is damaged)."""
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not text
        raise BadJSON(f"{uri} is not valid JSON ({exc}); it is damaged or not ours") from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def remove(uri: str, recursive: bool = True) -> None:
    fs, path = fs_and_path(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def list_files(uri: str, extensions: Iterable[str] | None = None) -> list[str]:
    """Sorted full URIs of the files below ``uri`` (recursive), optionally by extension."""
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"no such folder or prefix: {uri}")
    exts = tuple(e.lower() for e in extensions) if extensions else None
    found = []
    for p in fs.find(path):
        if exts is None or p.lower().endswith(exts):
            found.append(p)
    found.sort()
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if is_local(uri):
        return found
    return [f"{protocol}://{p}" if "://" not in p else p for p in found]


def file_signature(uri: str) -> dict[str, Any]:
    """Cheap identity of a file (size + mtime/etag) to put into fingerprints."""
    fs, path = fs_and_path(uri)
    info = fs.info(path)
    sig = {"size": info.get("size")}
    for key in ("ETag", "etag", "mtime", "LastModified", "created"):
        if key in info:
            sig[key.lower()] = str(info[key])
            break
    return sig


def zarr_store(uri: str, read_only: bool = False):
    """A Zarr v3 store for ``uri``: LocalStore on disk, FsspecStore (async) elsewhere."""
    import zarr

    uri = normalize(uri)
    if not has_protocol(uri):
        return zarr.storage.LocalStore(uri, read_only=read_only)
    if uri.startswith("memory://"):
        # The in-memory filesystem is synchronous; wrap it so zarr can drive it.
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs, path = fs_and_path(uri)
        afs = AsyncFileSystemWrapper(fs)
        return zarr.storage.FsspecStore(afs, path=path, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(uri, read_only=read_only)
