-- Conveyor's release ledger lives in its own database on the compose stack's PostgreSQL server.
CREATE DATABASE conveyor_ledger OWNER airflow;
