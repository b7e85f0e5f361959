-- Run once by the Postgres image of deploy/compose.yaml when its data folder is created
-- (/docker-entrypoint-initdb.d), as the owner role POSTGRES_USER (warren_owner).
-- The worker's role: it logs in and gets the grants of grants.sql once `warren migrate` has
-- created the tables. The password is the development one: change it for anything real.
CREATE ROLE warren_worker LOGIN PASSWORD 'warren-worker-dev';
