"""CopyActivity: copy between S3DataNodes and SQL data nodes, streaming, in the node's data format.

What AWS documents (reference §6.5; dp-object-copyactivity, dp-object-s3datanode) and this handler does:

- ``input`` and ``output`` are each one S3DataNode, SqlDataNode or MySqlDataNode. Any other node (DynamoDB,
  Redshift...) ends FAILED ``BridgeUnsupportedDataNode``.
- **S3 → S3**: ``filePath`` → ``filePath``; ``directoryPath`` → ``directoryPath`` (every object under the prefix,
  to the same relative key); ``filePath`` → ``directoryPath`` (the object keeps its name). When both nodes have
  the same layout (AWS: "the same dataFormat") the bytes are copied as they are, "high-performance"; otherwise,
  and for ``directoryPath`` → ``filePath`` (AWS: "record-by-record copy occurs when copying a directory to a
  file"), records are read in the input's format and written in the output's. ``compression: gzip`` on a node
  means its objects are gzip: read through a decompressor, written through a compressor; key names are kept.
- **SQL → S3**: the rows of the node's ``selectQuery`` (else its whole ``table``), streamed from a server-side
  cursor, written in the output node's format. A ``directoryPath`` output gets one object,
  ``<directoryPath>/<input node id>.<csv|tsv|txt>`` (``.gz`` added when gzip). AWS does not document the name; a
  fixed one means a retried attempt replaces its earlier output instead of adding a second copy.
- **S3 → SQL**: the records of the object (or of every object under the directory), in batches, in one
  transaction, with the node's ``insertQuery`` else a plain ``INSERT`` in table column order. The table is first
  created with ``createTableSql`` when it is missing. **SQL → SQL** streams rows the same way.
- Nothing is ever held whole in memory: objects move in chunks of :data:`CHUNK_BYTES` and uploads in parts
  (``workers.storage``), rows in batches (``workers.sql``). The task's cancellation and ``attemptTimeout`` are
  checked between chunks.
- Outcomes: FINISHED; FAILED ``BridgeS3NotFound`` (missing input object or empty input directory), other
  ``BridgeS3...``, ``BridgeSqlError`` / ``BridgeDatabaseUnavailable`` / ``BridgeUnsupportedDatabase`` (from
  ``workers.sql``), ``BridgeDataFormatError`` (malformed data, naming the object and line),
  ``BridgeUnsupportedDataFormat``, ``BridgeUnsupportedDataNode``, ``BridgeAttemptTimeout``, ``BridgeInvalidTask``.
  An output object is written completely or not at all.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError

from bridge.errors import Canceled, InvalidTask, TaskFailure
from bridge.taskmodel import PipelineObject
from workers import sql, storage
from workers.context import Outcome, TaskContext, safe_name
from workers.formats import DataFormat, DataFormatError, Row, RowReader, RowWriter, data_format
from workers.handlers import register

#: Bytes read from S3 (and checked for cancellation) at a time.
CHUNK_BYTES = 1024 * 1024
#: gzip level for compressed outputs: zlib's default balance of speed and size.
GZIP_LEVEL = 6
S3_NODE = "S3DataNode"
SQL_NODES = frozenset({"SqlDataNode", "MySqlDataNode"})
_INSTANCE_SUFFIX = re.compile(r"_\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


class UnsupportedDataNode(TaskFailure):
    """CopyActivity cannot read or write this kind of data node."""

    error_id = "BridgeUnsupportedDataNode"


@dataclass(frozen=True)
class S3Node:
    """An S3DataNode as CopyActivity sees it.

    Attributes:
        node_id: The data node's id.
        uri: Its ``directoryPath`` or ``filePath``.
        is_directory: Whether ``uri`` is a directory (``directoryPath``).
        gzip: ``compression: gzip``.
        fmt: Its data format.
    """

    node_id: str
    uri: str
    is_directory: bool
    gzip: bool
    fmt: DataFormat

    def object_uri(self, name: str) -> str:
        """The URI of ``name`` inside this directory node."""
        return storage.join_uri(self.uri, name)


# -- the activity -------------------------------------------------------------------------------------------


@register("CopyActivity")
def run_copy(ctx: TaskContext) -> Outcome:
    """Copy the activity's ``input`` data node to its ``output`` data node.

    Raises:
        Canceled: Data Pipeline canceled the task while it copied.
        TaskFailure: every failure, with the error ids listed in the module docstring.
    """
    source, target = _node(ctx, "input"), _node(ctx, "output")
    guard = _Guard(ctx)
    if source.type == S3_NODE and target.type == S3_NODE:
        _s3_to_s3(ctx, guard, _s3_node(ctx, source), _s3_node(ctx, target))
    elif source.type == S3_NODE:
        _s3_to_sql(ctx, guard, _s3_node(ctx, source), target)
    elif target.type == S3_NODE:
        _sql_to_s3(ctx, guard, source, _s3_node(ctx, target))
    else:
        sql.create_table_if_missing(ctx, target)
        with _exported(ctx, source) as rows:
            count = sql.import_rows(ctx, target, None, guard.rows(rows))
        ctx.log.info("copied %d rows from %s to %s", count, source.id, target.id)
    return Outcome.finished()


def _node(ctx: TaskContext, key: str) -> PipelineObject:
    """The activity's one ``input`` or ``output`` node, checked to be a kind CopyActivity copies.

    Raises:
        InvalidTask: none, or more than one.
        UnsupportedDataNode: a DynamoDB, Redshift or other node.
    """
    refs = ctx.attempt.refs(key)
    if len(refs) != 1:
        raise InvalidTask(f"CopyActivity needs exactly one '{key}' data node, not {len(refs)}")
    node = ctx.resolve(refs[0])
    kind = node.type or "untyped object"
    if kind != S3_NODE and kind not in SQL_NODES:
        hint = " (use RedshiftCopyActivity on AWS)" if "Redshift" in kind else ""
        raise UnsupportedDataNode(
            f"CopyActivity cannot copy {'from' if key == 'input' else 'to'} {node.id!r}, a {kind}: it copies "
            f"between S3DataNode, SqlDataNode and MySqlDataNode only{hint}"
        )
    return node


def _s3_node(ctx: TaskContext, node: PipelineObject) -> S3Node:
    """An S3DataNode's location, compression and data format.

    Raises:
        InvalidTask: no ``directoryPath`` / ``filePath``, not an S3 URI, or an unknown ``compression``.
        UnsupportedDataFormat: a data format other than CSV, TSV or Custom.
    """
    directory, file_path = node.get("directoryPath"), node.get("filePath")
    uri = (directory or file_path or "").strip()
    if not uri:
        only = " (manifestFilePath is for RedshiftCopyActivity)" if node.get("manifestFilePath") else ""
        raise InvalidTask(f"S3DataNode {node.id!r} has neither 'directoryPath' nor 'filePath'{only}")
    storage.parse_s3_uri(uri)
    compression = (node.get("compression") or "none").strip().lower()
    if compression not in ("none", "gzip"):
        raise InvalidTask(f"S3DataNode {node.id!r}: compression {compression!r} is not 'none' or 'gzip'")
    format_id = node.ref("dataFormat")
    fmt = data_format(ctx.resolve(format_id) if format_id else None)
    return S3Node(node.id, uri, bool(directory), compression == "gzip", fmt)


# -- S3 to S3 -----------------------------------------------------------------------------------------------


def _s3_to_s3(ctx: TaskContext, guard: _Guard, source: S3Node, target: S3Node) -> None:
    keys = _input_objects(ctx, source, exclude=target.uri if target.is_directory else None)
    if source.is_directory and not target.is_directory:
        count = _write_rows(ctx, guard, _read_rows(ctx, guard, source, keys), target, target.uri)
        ctx.log.info("copied %d records of %d objects under %s to %s", count, len(keys), source.uri, target.uri)
        return
    for uri in keys:
        if not target.is_directory:
            destination = target.uri
        elif source.is_directory:
            destination = target.object_uri(uri[len(_prefix(source.uri)) :])
        else:
            destination = target.object_uri(PurePosixPath(storage.parse_s3_uri(uri)[1]).name)
        if source.fmt.same_layout(target.fmt):
            size = _copy_bytes(ctx, guard, uri, source.gzip, destination, target.gzip)
            ctx.log.info("copied %s to %s (%d bytes)", uri, destination, size)
        else:
            rows = _read_rows(ctx, guard, source, [uri])
            count = _write_rows(ctx, guard, rows, target, destination)
            kinds = (source.fmt.kind, target.fmt.kind)
            ctx.log.info("copied %d records from %s to %s (%s to %s)", count, uri, destination, *kinds)


def _copy_bytes(ctx: TaskContext, guard: _Guard, uri: str, src_gzip: bool, destination: str, dst_gzip: bool) -> int:
    """Stream one object to ``destination``, (de)compressing when only one side is gzip; returns bytes read.

    Both gzip: the compressed bytes are copied as they are.
    """
    size = 0
    with (
        contextlib.closing(storage.open_read(ctx.settings, uri)) as body,
        storage.open_write(ctx.settings, destination) as out,
        _sink(out, dst_gzip and not src_gzip) as sink,
    ):
        for chunk in guard.chunks(_source(body, src_gzip and not dst_gzip), uri):
            sink.write(chunk)
            size += len(chunk)
    return size


# -- SQL and records ----------------------------------------------------------------------------------------


def _sql_to_s3(ctx: TaskContext, guard: _Guard, node: PipelineObject, target: S3Node) -> None:
    destination = target.uri
    if target.is_directory:
        name = safe_name(_INSTANCE_SUFFIX.sub("", node.id.removeprefix("@")))
        destination = target.object_uri(f"{name}.{target.fmt.extension}{'.gz' if target.gzip else ''}")
    with _exported(ctx, node) as rows:
        count = _write_rows(ctx, guard, rows, target, destination)
    ctx.log.info("copied %d rows from %s to %s", count, node.id, destination)


def _s3_to_sql(ctx: TaskContext, guard: _Guard, source: S3Node, node: PipelineObject) -> None:
    keys = _input_objects(ctx, source)  # before the table is touched: a missing input changes nothing
    if sql.create_table_if_missing(ctx, node):
        ctx.log.info("created the table of %s with its createTableSql", node.id)
    count = sql.import_rows(ctx, node, None, _read_rows(ctx, guard, source, keys))
    ctx.log.info("copied %d records from %d object(s) at %s to %s", count, len(keys), source.uri, node.id)


@contextlib.contextmanager
def _exported(ctx: TaskContext, node: PipelineObject) -> Iterator[Iterator[tuple[Any, ...]]]:
    """The node's rows (``workers.sql.export_rows``), its cursor and connection closed however the copy ends."""
    rows = sql.export_rows(ctx, node)
    try:
        yield rows
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def _read_rows(ctx: TaskContext, guard: _Guard, source: S3Node, uris: Sequence[str]) -> Iterator[Row]:
    """The records of ``uris`` in turn, in the source's format (one width for all of them)."""
    reader = RowReader(source.fmt)
    for uri in uris:
        with contextlib.closing(storage.open_read(ctx.settings, uri)) as body:
            yield from reader.read(guard.chunks(_source(body, source.gzip), uri), uri)


def _write_rows(ctx: TaskContext, guard: _Guard, rows: Iterable[Sequence[Any]], target: S3Node, uri: str) -> int:
    """Write ``rows`` to the object ``uri`` in the target's format (gzip if it says so); returns how many."""
    writer = RowWriter(target.fmt, uri)
    with storage.open_write(ctx.settings, uri) as out, _sink(out, target.gzip) as sink:
        for chunk in writer.encode(guard.rows(rows)):
            sink.write(chunk)
    return writer.rows


# -- S3 objects ---------------------------------------------------------------------------------------------


def _input_objects(ctx: TaskContext, source: S3Node, exclude: str | None = None) -> list[str]:
    """The object URIs an input node names: its file, or every object under its directory (sorted).

    Directory markers (keys ending with ``/``) and anything under ``exclude`` (an output directory inside the
    input one) are left out.

    Raises:
        S3NotFound: the file does not exist, or no object lies under the directory.
    """
    if not source.is_directory:
        if not storage.exists(ctx.settings, source.uri):
            raise storage.S3NotFound(f"S3 object not found: {source.uri} (input {source.node_id!r})")
        return [source.uri]
    bucket, _ = storage.parse_s3_uri(source.uri)
    skip = _prefix(exclude) if exclude else None
    uris = [
        f"s3://{bucket}/{key}"
        for key in storage.list_keys(ctx.settings, source.uri)
        if not key.endswith("/") and not (skip and f"s3://{bucket}/{key}".startswith(skip))
    ]
    if not uris:
        raise storage.S3NotFound(f"S3 directory not found: no objects under {source.uri} (input {source.node_id!r})")
    return sorted(uris)


def _prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _source(body: Any, unzip: bool) -> _Readable:
    """The object's bytes, decompressed if ``unzip`` (every gzip member, as ``gzip -d`` does)."""
    stream: _Readable = gzip.GzipFile(fileobj=body, mode="rb") if unzip else body
    return stream


@contextlib.contextmanager
def _sink(out: storage.S3Writer, compress: bool) -> Iterator[_Writable]:
    """Where to write an output object's bytes: the S3 writer, or a gzip compressor in front of it."""
    if not compress:
        yield out
        return
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as zipped:
        yield zipped


# -- cancellation and deadlines -----------------------------------------------------------------------------


class _Guard:
    """Stops a copy between chunks or rows: on cancellation (``Canceled``) or past ``attemptTimeout``."""

    #: Rows between two looks at the clock and the cancel signal.
    ROWS_PER_CHECK = 1000

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        timeout_s = ctx.task.attempt_timeout_s
        self.deadline = time.monotonic() + timeout_s if timeout_s else None
        self.timeout_s = timeout_s

    def check(self) -> None:
        """Raise if the copy must stop.

        Raises:
            Canceled: the task was canceled.
            TaskFailure: ``BridgeAttemptTimeout``.
        """
        cancel = self.ctx.cancel
        if cancel.is_set():
            raise Canceled(str(getattr(cancel, "reason", "") or self.ctx.cancel_reason or "canceled"))
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TaskFailure(f"the copy ran past its attemptTimeout ({self.timeout_s:g} s)", "BridgeAttemptTimeout")

    def chunks(self, stream: _Readable, uri: str) -> Iterator[bytes]:
        """``stream`` in chunks of :data:`CHUNK_BYTES`, checked before each one.

        Raises:
            S3Error: the download broke off.
            DataFormatError: the data is not valid gzip.
        """
        while True:
            self.check()
            try:
                chunk = stream.read(CHUNK_BYTES)
            except BotoCoreError as exc:
                raise storage.s3_failure(exc, uri, "reading") from exc
            except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
                raise DataFormatError(f"{uri}: not valid gzip data ({exc}); check 'compression' on its node") from exc
            if not chunk:
                return
            yield chunk

    def rows(self, rows: Iterable[Sequence[Any]]) -> Iterator[Sequence[Any]]:
        """``rows``, checked every :attr:`ROWS_PER_CHECK` rows."""
        for count, row in enumerate(rows):
            if count % self.ROWS_PER_CHECK == 0:
                self.check()
            yield row
