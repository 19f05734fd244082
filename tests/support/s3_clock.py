"""The S3 server's clock, as a snapshot's listing records it."""

from __future__ import annotations

import email.utils
from typing import Any

__all__ = ["server_time"]


def server_time(client: Any, bucket: str) -> float:
    """The server's clock (the Date header of a LIST of ``bucket``), in Unix seconds."""
    date = client.list_objects_v2(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]["date"]
    return email.utils.parsedate_to_datetime(date).timestamp()
