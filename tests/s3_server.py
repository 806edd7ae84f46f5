"""A real S3 server on 127.0.0.1 (moto's standalone server) for DVC remote tests and benchmarks.

The credentials are test values placed in the environment of the DVC subprocesses only. They
never go into a DVC config file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Keys in the environment take precedence over ~/.aws files; this also stops botocore from
    # asking an instance metadata service for credentials.
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    """A running moto server: its endpoint URL and the bucket created on it."""

    server: ThreadedMotoServer
    endpoint_url: str
    bucket: str

    def stop(self) -> None:
        self.server.stop()


def dvc_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``base`` (default: ``os.environ``) with S3 test credentials and no DVC analytics."""
    environment = dict(os.environ if base is None else base)
    environment.pop("AWS_PROFILE", None)
    environment.update(TEST_CREDENTIALS)
    environment["DVC_NO_ANALYTICS"] = "1"
    environment["DVC_NO_UPDATER"] = "1"
    return environment


@contextlib.contextmanager
def running_s3_server(bucket: str = "dermcan-test") -> Iterator[S3Server]:
    """Start moto's S3 server on a free port of 127.0.0.1, create ``bucket`` and stop it on exit."""
    # The server's request log (one line per request) would drown the test and benchmark output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=bucket)
    running = S3Server(server=server, endpoint_url=endpoint_url, bucket=bucket)
    try:
        yield running
    finally:
        with contextlib.suppress(Exception):
            server.stop()

