-- What a worker needs, and nothing more (docs/operations.md, "Database roles", explains each
-- line; a test keeps this file equal to that page). Run by the migrating role after every
-- `warren migrate`: a migration may add a table the workers read. Granting again is harmless.
GRANT CONNECT ON DATABASE warren TO warren_worker;
GRANT USAGE ON SCHEMA public TO warren_worker;
GRANT SELECT, INSERT, UPDATE ON warren_jobs, warren_workers TO warren_worker;
GRANT SELECT ON warren_migrations, warren_queue_pauses TO warren_worker;
GRANT DELETE ON warren_jobs TO warren_worker;
GRANT SELECT, INSERT, UPDATE ON warren_schedules TO warren_worker;
GRANT SELECT ON warren_limits TO warren_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON warren_limit_leases, warren_limit_buckets TO warren_worker;
