-- Run once, when the data volume is first created: the basic-auth app's users
-- live in a database of their own (POSTGRES_DB, mlflow, holds runs and the registry).
CREATE DATABASE mlflow_auth OWNER mlflow;
