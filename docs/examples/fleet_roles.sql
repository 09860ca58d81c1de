-- rlguard's fleet ledger in an existing PostgreSQL: roles and schema (docs/fleet.md).
-- Run once, as an administrator, in the database the fleet uses:
--     psql "postgresql://admin@db.example/rlguard" -f fleet_roles.sql
-- then give the two roles passwords (\password rlguard_writer, \password rlguard_reader)
-- or certificates. The tests run this very file against a throwaway cluster.

-- The monitors: one role for every host (or one per host, see docs/fleet.md). It owns the
-- rlguard schema and the tables it makes there on first write, and has no other rights.
CREATE ROLE rlguard_writer LOGIN;
CREATE SCHEMA rlguard AUTHORIZATION rlguard_writer;

-- Trainers and `rlguard episodes --url`: read the rlguard schema, write nothing.
CREATE ROLE rlguard_reader LOGIN;
GRANT USAGE ON SCHEMA rlguard TO rlguard_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE rlguard_writer IN SCHEMA rlguard
    GRANT SELECT ON TABLES TO rlguard_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA rlguard TO rlguard_reader;

-- Nobody else reaches the schema; nothing of rlguard's lands in public.
REVOKE ALL ON SCHEMA rlguard FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
