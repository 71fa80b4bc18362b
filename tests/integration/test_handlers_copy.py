"""CopyActivity end to end: S3 ↔ S3, PostgreSQL / MariaDB ↔ S3, broken inputs, memory, and two AWS samples.

One stack for the module: moto's S3 server (real HTTP), the local service (periods scaled 60x), a private Redis,
one threads-pool worker (one slot) on ``dp.copywg`` with the S3 endpoint in its environment, and
``bridge start`` for ``copywg`` and ``copymem``, heartbeating every second (a cancel lands within about a
second). The memory tests start a fresh worker of their own on ``dp.copymem``, so its peak RSS owes nothing to
earlier tests. Outcomes are read the way a user reads them: DescribeObjects, the objects that landed in S3, the
rows in the database.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.databases import TestDatabase, mariadb_db, postgres_db
from tests.integration.bridge_stack import Stack, instance, logged, run_pipeline, stop_process, wait_final
from tests.moto_server import MotoServer
from tests.samples_adapt import DATETIME_FORMAT, load_sample, starting_at, to_worker_group, with_values
from tests.support import instance_of, put_definition, wait_for

#: The database fixtures, imported so pytest finds them here.
DATABASE_FIXTURES = (postgres_db, mariadb_db)
GROUP = "copywg"
MEM_GROUP = "copymem"
MB = 1024 * 1024
#: The issue's bound: copying a 512 MB object raises the worker's peak RSS by less than this.
RSS_BOUND_MB = 64


@pytest.fixture(scope="module")
def s3server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(s3server: MotoServer) -> Iterator[Stack]:
    # Heartbeats every second, so a cancel reaches a running copy within about a second.
    stack = Stack(
        ["--poll-wait", "2", "--time-scale", "60"],
        BRIDGE_KILL_GRACE_S="2",
        BRIDGE_HEARTBEAT_INTERVAL_S="1",
        **s3server.env,
    )
    try:
        stack.start()
        stack.worker(f"dp.{GROUP}", pool="threads", concurrency=1)
        stack.bridge(GROUP, MEM_GROUP)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def bucket(s3server: MotoServer) -> str:
    return s3server.bucket()


@pytest.fixture
def s3(s3server: MotoServer) -> Any:
    return s3server.client()


def copy_activity(object_id: str, source: str, target: str, **fields: Any) -> dict[str, Any]:
    return {"id": object_id, "type": "CopyActivity", "input": {"ref": source}, "output": {"ref": target}, **fields}


def s3_node(object_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": object_id, "type": "S3DataNode", **fields}


def sql_node(object_id: str, table: str, **fields: Any) -> dict[str, Any]:
    return {"id": object_id, "type": "SqlDataNode", "database": {"ref": "Db"}, "table": table, **fields}


def read(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"][len(prefix) :] for item in found)


def new_table() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def finished(ended: dict[str, Any]) -> None:
    assert ended["@status"] == "FINISHED", (ended.get("errorId"), ended.get("errorMessage"))


def never_shown(stack: Stack, pipeline_id: str, component_id: str, secret: str) -> None:
    """``secret`` is in neither what Data Pipeline shows of the instance nor the worker's log."""
    assert secret not in json.dumps(instance(stack.dp, pipeline_id, component_id))
    assert secret not in stack.workers[0].text()


# -- S3 to S3 -----------------------------------------------------------------------------------------------


def test_a_file_copies_to_a_file_and_into_a_directory_byte_for_byte(stack: Stack, bucket: str, s3: Any) -> None:
    # given a CSV object (with escapes, a NULL and non-ASCII text), copied to a file and into a directory
    data = "1,a\\,b,\\N\n2,café,x\\\\y\n".encode()
    s3.put_object(Bucket=bucket, Key="s2s/in/orders.csv", Body=data)
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        s3_node("In", filePath=f"s3://{bucket}/s2s/in/orders.csv"),
        s3_node("OutFile", filePath=f"s3://{bucket}/s2s/out/copy.csv"),
        s3_node("OutDir", directoryPath=f"s3://{bucket}/s2s/dir"),
        copy_activity("ToFile", "In", "OutFile"),
        copy_activity("ToDir", "In", "OutDir"),
    )

    # when both run
    ended = [wait_final(stack.dp, pipeline, "ToFile"), wait_final(stack.dp, pipeline, "ToDir")]

    # then both finished: the file is a copy, and the directory holds the object under its own name
    for fields in ended:
        finished(fields)
    assert read(s3, bucket, "s2s/out/copy.csv") == data
    assert keys(s3, bucket, "s2s/dir/") == ["orders.csv"]
    assert read(s3, bucket, "s2s/dir/orders.csv") == data


def test_a_directory_is_compressed_then_decompressed_key_by_key(stack: Stack, bucket: str, s3: Any) -> None:
    # given a directory of three objects (one nested, one empty), copied to a gzip directory, and that one to a
    # plain directory once the first copy is done
    originals = {"a.csv": b"1,x\n2,y\n", "sub/b.csv": b"3,z\n" * 10000, "empty.csv": b""}
    for name, body in originals.items():
        s3.put_object(Bucket=bucket, Key=f"gz/src/{name}", Body=body)
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        s3_node("Plain", directoryPath=f"s3://{bucket}/gz/src"),
        s3_node("Zipped", directoryPath=f"s3://{bucket}/gz/zipped/", compression="gzip"),
        s3_node("Back", directoryPath=f"s3://{bucket}/gz/back"),
        copy_activity("Zip", "Plain", "Zipped"),
        copy_activity("Unzip", "Zipped", "Back", dependsOn={"ref": "Zip"}),
    )

    # when both run
    finished(wait_final(stack.dp, pipeline, "Zip"))
    finished(wait_final(stack.dp, pipeline, "Unzip"))

    # then every object was gzip in between, under the same relative key, and came back byte for byte
    assert keys(s3, bucket, "gz/zipped/") == sorted(originals)
    for name, body in originals.items():
        zipped = read(s3, bucket, f"gz/zipped/{name}")
        assert zipped[:2] == b"\x1f\x8b" and gzip.decompress(zipped) == body
        assert read(s3, bucket, f"gz/back/{name}") == body


def test_a_directory_into_one_file_is_copied_record_by_record_into_the_output_format(
    stack: Stack, bucket: str, s3: Any
) -> None:
    # given two CSV objects (one gzip) and a TSV output file: AWS copies a directory to a file record by record
    s3.put_object(Bucket=bucket, Key="d2f/in/1.csv.gz", Body=gzip.compress(b"1,tab\there,\\N\n2,a\\,b,\n"))
    s3.put_object(Bucket=bucket, Key="d2f/in/2.csv.gz", Body=gzip.compress(b"3,last,line"))
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {"id": "Tsv", "type": "TSV"},
        s3_node("Many", directoryPath=f"s3://{bucket}/d2f/in", compression="gzip"),
        s3_node("One", filePath=f"s3://{bucket}/d2f/all.tsv", dataFormat={"ref": "Tsv"}),
        copy_activity("Merge", "Many", "One"),
    )

    # when it runs
    finished(wait_final(stack.dp, pipeline, "Merge"))

    # then the records of both objects, in key order, are in the file as TSV (tabs escaped, commas no longer)
    assert read(s3, bucket, "d2f/all.tsv") == b"1\ttab\\\there\t\\N\n2\ta,b\t\n3\tlast\tline\n"


# -- SQL and S3 ---------------------------------------------------------------------------------------------


def test_a_postgresql_table_exports_to_a_csv_object_as_aws_writes_it(
    stack: Stack, bucket: str, s3: Any, postgres_db: TestDatabase
) -> None:
    # given a PostgreSQL table with a NULL, a comma, a newline, a backslash and a numeric column
    table = new_table()
    postgres_db.execute(
        f"CREATE TABLE {table} (id int, name text, note text, amount numeric(10, 2))",
        f"INSERT INTO {table} VALUES (1, 'plain', NULL, 1.5), (2, 'a,b', E'line1\\nline2', NULL),"
        f" (3, E'back\\\\slash', '', 0)",
    )
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        postgres_db.jdbc_database("Db"),
        sql_node("Orders", table, selectQuery=f"SELECT * FROM {table} ORDER BY id"),
        s3_node("Export", directoryPath=f"s3://{bucket}/pg/export"),
        copy_activity("Unload", "Orders", "Export"),
    )

    # when it runs
    finished(wait_final(stack.dp, pipeline, "Unload"))

    # then one object named after the input node holds the rows: no quoting, backslash escapes, \N for NULL
    assert keys(s3, bucket, "pg/export/") == ["Orders.csv"]
    assert read(s3, bucket, "pg/export/Orders.csv") == (
        b"1,plain,\\N,1.50\n2,a\\,b,line1\\\nline2,\\N\n3,back\\\\slash,,0.00\n"
    )


def test_a_gzip_tsv_object_loads_into_a_mariadb_table_it_creates(
    stack: Stack, bucket: str, s3: Any, mariadb_db: TestDatabase
) -> None:
    # given a gzip TSV object (an escaped tab, NULLs, an escaped backslash, unicode) and a MariaDB data node whose
    # table does not exist yet but has createTableSql
    table = new_table()
    tsv = "1\tTab\\\there\t\\N\n2\tcafé ☕\tx\\\\y\n3\t\\N\t\n".encode()
    s3.put_object(Bucket=bucket, Key="maria/in.tsv.gz", Body=gzip.compress(tsv))
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        mariadb_db.jdbc_database("Db"),
        {"id": "Tsv", "type": "TSV", "column": ["id INT", "name STRING", "note STRING"]},
        s3_node("Landing", filePath=f"s3://{bucket}/maria/in.tsv.gz", compression="gzip", dataFormat={"ref": "Tsv"}),
        sql_node(
            "Target",
            table,
            createTableSql=f"CREATE TABLE {table} (id INT, name VARCHAR(40), note VARCHAR(40)) CHARACTER SET utf8mb4",
        ),
        copy_activity("Load", "Landing", "Target"),
    )

    # when it runs
    finished(wait_final(stack.dp, pipeline, "Load"))

    # then the table exists and holds the records, \N as NULL and an empty field as an empty string
    assert mariadb_db.query(f"SELECT id, name, note FROM {table} ORDER BY id") == [
        (1, "Tab\there", None),
        (2, "café ☕", "x\\y"),
        (3, None, ""),
    ]


def test_malformed_data_fails_naming_the_line_and_loads_nothing(
    stack: Stack, bucket: str, s3: Any, mariadb_db: TestDatabase
) -> None:
    # given 1500 good records (more than one insert batch) and then one with three fields instead of two
    table = new_table()
    mariadb_db.execute(f"CREATE TABLE {table} (id INT, name VARCHAR(20))")
    body = "".join(f"{n},name {n}\n" for n in range(1, 1501)) + "1501,x,extra\n"
    s3.put_object(Bucket=bucket, Key="bad/in.csv", Body=body.encode())
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        mariadb_db.jdbc_database("Db"),
        s3_node("Broken", filePath=f"s3://{bucket}/bad/in.csv"),
        sql_node("Target", table),
        copy_activity("Load", "Broken", "Target"),
    )

    # when it runs
    ended = wait_final(stack.dp, pipeline, "Load")

    # then it failed as a data format error naming the object and the line, and no record was kept
    assert (ended["@status"], ended["errorId"]) == ("FAILED", "BridgeDataFormatError")
    assert f"s3://{bucket}/bad/in.csv: line 1501: 3 fields where 2 fields were expected" in ended["errorMessage"]
    assert mariadb_db.query(f"SELECT count(*) FROM {table}") == [(0,)]


# -- what fails ---------------------------------------------------------------------------------------------


def test_a_missing_input_fails_not_found_and_writes_nothing(stack: Stack, bucket: str, s3: Any) -> None:
    missing_file, empty_dir = f"s3://{bucket}/missing/file.csv", f"s3://{bucket}/missing/dir"
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        s3_node("NoFile", filePath=missing_file),
        s3_node("NoDir", directoryPath=empty_dir),
        s3_node("Out", directoryPath=f"s3://{bucket}/missing/out"),
        copy_activity("FromFile", "NoFile", "Out"),
        copy_activity("FromDir", "NoDir", "Out"),
    )
    for component, uri in (("FromFile", missing_file), ("FromDir", empty_dir)):
        ended = wait_final(stack.dp, pipeline, component)
        assert (ended["@status"], ended["errorId"]) == ("FAILED", "BridgeS3NotFound")
        assert uri in ended["errorMessage"]
    assert keys(s3, bucket, "missing/out/") == []


def test_a_sql_error_fails_with_the_databases_message_and_no_password(
    stack: Stack, bucket: str, s3: Any, mariadb_db: TestDatabase
) -> None:
    missing = new_table()
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        mariadb_db.jdbc_database("Db"),
        sql_node("Gone", missing),
        s3_node("Out", filePath=f"s3://{bucket}/sqlerr/out.csv"),
        copy_activity("Unload", "Gone", "Out"),
    )
    ended = wait_final(stack.dp, pipeline, "Unload")
    assert (ended["@status"], ended["errorId"]) == ("FAILED", "BridgeSqlError")
    assert f"Table '{mariadb_db.name}.{missing}' doesn't exist" in ended["errorMessage"]
    assert keys(s3, bucket, "sqlerr/") == []
    never_shown(stack, pipeline, "Unload", mariadb_db.password)


def test_a_node_copyactivity_cannot_copy_fails_unsupported(stack: Stack, bucket: str) -> None:
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {"id": "Events", "type": "DynamoDBDataNode", "tableName": "events"},
        s3_node("Out", filePath=f"s3://{bucket}/ddb/out.csv"),
        copy_activity("Export", "Events", "Out"),
    )
    ended = wait_final(stack.dp, pipeline, "Export")
    assert (ended["@status"], ended["errorId"]) == ("FAILED", "BridgeUnsupportedDataNode")
    assert "'Events', a DynamoDBDataNode" in ended["errorMessage"]


# -- memory -------------------------------------------------------------------------------------------------


def big_object(s3: Any, bucket: str, key: str, size_mb: int) -> bytes:
    """Make a ``size_mb`` object in moto from copies of one random 8 MB part (no data goes over the wire twice).

    Returns the part, whose copies the object is.
    """
    part = os.urandom(8 * MB)
    s3.put_object(Bucket=bucket, Key=f"{key}.part", Body=part)
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number in range(1, size_mb // 8 + 1):
        copied = s3.upload_part_copy(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            PartNumber=number,
            CopySource={"Bucket": bucket, "Key": f"{key}.part"},
        )
        parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    return part


def drop(s3: Any, bucket: str, *keys: str) -> None:
    """Delete big objects once checked (moto keeps every object of the module)."""
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys]})


def peak_rss_kb(pid: int) -> int:
    """A process's peak resident set size (``VmHWM``, a high-water mark), in kB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])


def copy_once(stack: Stack, source: str, target: str) -> dict[str, Any]:
    pipeline = run_pipeline(
        stack.dp,
        MEM_GROUP,
        s3_node("In", filePath=source),
        s3_node("Out", filePath=target),
        copy_activity("Cp", "In", "Out"),
    )
    return wait_final(stack.dp, pipeline, "Cp", timeout=240)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size_mb", [64, pytest.param(512, marks=pytest.mark.slow)])
def test_copying_a_big_object_streams_within_the_memory_bound(stack: Stack, bucket: str, s3: Any, size_mb: int) -> None:
    # given a big object, and a fresh worker (threads, one slot) warmed up by a small copy
    key = f"big/{size_mb}mb.bin"
    part = big_object(s3, bucket, key, size_mb)
    s3.put_object(Bucket=bucket, Key="big/small.bin", Body=b"warm up\n")
    worker = stack.worker(f"dp.{MEM_GROUP}", pool="threads", concurrency=1)
    try:
        finished(copy_once(stack, f"s3://{bucket}/big/small.bin", f"s3://{bucket}/big/small-copy.bin"))
        baseline_kb = peak_rss_kb(worker.pid)

        # when the big object is copied S3 to S3
        started = time.monotonic()
        ended = copy_once(stack, f"s3://{bucket}/{key}", f"s3://{bucket}/{key}.copy")
        elapsed = time.monotonic() - started
        rise_mb = (peak_rss_kb(worker.pid) - baseline_kb) / 1024
    finally:
        stop_process(worker)

    # then it finished, the copy is whole, and the worker's peak RSS rose by less than the bound
    finished(ended)
    copied = s3.head_object(Bucket=bucket, Key=f"{key}.copy")
    assert copied["ContentLength"] == size_mb * MB
    for offset in (0, size_mb * MB - 8 * MB):
        got = s3.get_object(Bucket=bucket, Key=f"{key}.copy", Range=f"bytes={offset}-{offset + MB - 1}")["Body"]
        assert got.read() == part[:MB]
    drop(s3, bucket, key, f"{key}.part", f"{key}.copy")
    assert rise_mb < RSS_BOUND_MB, f"peak RSS rose by {rise_mb:.1f} MB copying {size_mb} MB in {elapsed:.1f} s"


def test_canceling_a_copy_stops_it_between_chunks_and_leaves_no_object(stack: Stack, bucket: str, s3: Any) -> None:
    # given a 256 MB copy whose upload to the destination has begun
    big_object(s3, bucket, "cancel/in.bin", 256)
    before = stack.counters("SetTaskStatus")
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        s3_node("In", filePath=f"s3://{bucket}/cancel/in.bin"),
        s3_node("Out", filePath=f"s3://{bucket}/cancel/out.bin"),
        copy_activity("Cp", "In", "Out"),
    )
    wait_for(lambda: uploads(s3, bucket, "cancel/out.bin"), timeout=60, what="the copy's multipart upload to begin")

    # when the instance is canceled
    stack.dp.set_status(pipelineId=pipeline, objectIds=[instance(stack.dp, pipeline, "Cp")["@id"]], status="TRY_CANCEL")

    # then the worker stops, aborts its upload and reports nothing: no object, no upload left, CANCELED
    logged(stack.workers[0], f"canceled worker_group={GROUP}", pipeline)
    assert keys(s3, bucket, "cancel/out") == []
    assert uploads(s3, bucket, "cancel/out.bin") == []
    assert instance(stack.dp, pipeline, "Cp")["@status"] == "CANCELED"
    assert stack.counters("SetTaskStatus") == before
    drop(s3, bucket, "cancel/in.bin", "cancel/in.bin.part")


def uploads(s3: Any, bucket: str, key: str) -> list[str]:
    """The multipart uploads in progress to ``key``."""
    found = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    return [upload["UploadId"] for upload in found if upload["Key"] == key]


# -- AWS samples --------------------------------------------------------------------------------------------


def test_the_aws_copy_s3_to_s3_sample_runs_its_day_to_finished(stack: Stack, s3server: MotoServer, s3: Any) -> None:
    # given devguide-copy-s3-to-s3.json as the samples README adapts it (workerGroup on the activity, its one-day
    # schedule moved to now), and its input file in a local example-bucket
    s3server.bucket("example-bucket")
    s3.put_object(Bucket="example-bucket", Key="source/inputfile.csv", Body=b"1,first\n2,second\n")
    start = datetime.strptime(stack.emulator.admin("clock")["now"], DATETIME_FORMAT)
    doc = starting_at(to_worker_group(load_sample("devguide-copy-s3-to-s3.json"), GROUP), start)
    pipeline_id = stack.dp.create_pipeline(name="copy-sample", uniqueId=str(uuid.uuid4()))["pipelineId"]
    assert not put_definition(stack.dp, pipeline_id, doc)["errored"]
    stack.dp.activate_pipeline(pipelineId=pipeline_id)

    # when the service clock passes the end of that day (a timeseries run starts at the end of its period)
    stack.emulator.admin("advance-clock", {"seconds": timedelta(days=1, minutes=1).total_seconds()})
    wait_for(lambda: instance_exists(stack, pipeline_id, "MyCopyActivity"), timeout=30, what="the day's instance")
    ended = wait_final(stack.dp, pipeline_id, "MyCopyActivity")

    # then the day's copy finished and the file is in its destination
    finished(ended)
    assert ended["@scheduledStartTime"] == start.strftime(DATETIME_FORMAT)
    assert read(s3, "example-bucket", "destination/outputfile.csv") == b"1,first\n2,second\n"


def instance_exists(stack: Stack, pipeline_id: str, component_id: str) -> bool:
    try:
        instance_of(stack.dp, pipeline_id, component_id)
    except AssertionError:  # none yet
        return False
    return True


def test_the_aws_rds_to_s3_sample_exports_a_mariadb_table(
    stack: Stack, bucket: str, s3: Any, mariadb_db: TestDatabase
) -> None:
    # given rds-to-s3.json adapted as the samples README says (→ worker group; the JDBC connection string, user
    # and masked password of the local MariaDB; output and logs on local S3) and a table the test creates
    table = new_table()
    mariadb_db.execute(
        f"CREATE TABLE {table} (id INT, title VARCHAR(40), year INT)",
        f"INSERT INTO {table} VALUES (1, 'Silent Night', 2003), (2, 'Tanssi, vaan', NULL)",
    )
    doc = with_values(
        to_worker_group(load_sample("rds-to-s3.json"), GROUP),
        myRDSConnectStr=mariadb_db.jdbc,
        myRDSUsername=mariadb_db.user,
        myRDSTableName=table,
        myOutputS3Path=f"s3://{bucket}/rds-out",
        myS3LogsPath=f"s3://{bucket}/rds-logs",
        **{"*myRDSPassword": mariadb_db.password},
    )
    pipeline_id = stack.dp.create_pipeline(name="rds-to-s3", uniqueId=str(uuid.uuid4()))["pipelineId"]
    result = put_definition(stack.dp, pipeline_id, doc)
    assert not result["errored"], result["validationErrors"]

    # when it is activated (a one-occurrence cron schedule: it runs at once)
    stack.dp.activate_pipeline(pipelineId=pipeline_id)
    ended = wait_final(stack.dp, pipeline_id, "RDStoS3CopyActivity")

    # then it finished; the table is in the dated output directory as CSV, and the password showed nowhere
    finished(ended)
    (name,) = keys(s3, bucket, "rds-out/")
    directory = datetime.strptime(ended["@scheduledStartTime"], DATETIME_FORMAT).strftime("%Y-%m-%d-%H-%M-%S")
    assert name == f"{directory}/SourceRDSTable.csv"
    assert read(s3, bucket, f"rds-out/{name}") == b"1,Silent Night,2003\n2,Tanssi\\, vaan,\\N\n"
    never_shown(stack, pipeline_id, "RDStoS3CopyActivity", mariadb_db.password)
