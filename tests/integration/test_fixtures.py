"""The shared fixtures give real servers: PostgreSQL and the EC2 emulator."""

from __future__ import annotations

import aioboto3
import asyncpg
import pytest

pytestmark = pytest.mark.integration


async def test_database_url_is_a_fresh_database(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select count(*) from pg_tables where schemaname = 'public'") == 0
    finally:
        await conn.close()


async def test_ec2_endpoint_speaks_ec2(ec2_endpoint: str) -> None:
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-central-1")
    async with session.client("ec2", endpoint_url=ec2_endpoint) as ec2:
        out = await ec2.describe_instances()
        assert out["Reservations"] == []
