-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d),
-- as POSTGRES_USER connected to POSTGRES_DB (the slwtune job registry).
-- MLflow gets a database of its own: its Alembic migrations own their schema, and
-- keeping the registry's tables out of it lets either be reset without the other.
CREATE DATABASE mlflow;
