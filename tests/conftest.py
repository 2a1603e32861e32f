"""Shared fixtures: stores on every backend, including a real S3 server on loopback."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

import featcache

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto's server mode) on 127.0.0.1, ephemeral port.

    Sets the usual AWS environment variables, so subprocesses started by a test
    (``bobx ...``, writer processes) reach it exactly as a user's would."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    """A fresh bucket on the loopback S3 server; returns ``s3://bucket/prefix``."""
    import s3fs

    bucket = f"bobx-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.mkdir(bucket)
    return f"s3://{bucket}/team"


@pytest.fixture(
    params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)],
)
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The same tests run against every backend (a conformance suite)."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return request.getfixturevalue("s3_url")


@pytest.fixture
def store(store_url: str) -> featcache.Store:
    return featcache.open_store(store_url)
