-- The provider simulators' own databases (payment gateway, carrier): their ledgers live
-- beside the app's database on the same server, never in it. Runs on the first start of
-- an empty data volume (docker-entrypoint-initdb.d).
CREATE DATABASE gateway OWNER app;
CREATE DATABASE carrier OWNER app;
