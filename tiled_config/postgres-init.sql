-- Run once by the postgres image of docker-compose.yml, on an empty data directory.
-- POSTGRES_DB creates Tiled's catalog database (`tiled`); Prefect gets its own, owned
-- by the same account, because both keep their schema version in `alembic_version`.
CREATE DATABASE prefect;
