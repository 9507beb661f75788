"""Fixtures of the scale-out tests: a throwaway PostgreSQL server (tests/pg_fixture.py)."""

from pg_fixture import pg_server, pg_url, pytest_configure  # noqa: F401
