-- What the hosted PostgreSQL provider creates before any PrimeFlow migration runs (cluster-wide
-- roles). Run it as a superuser to make a plain PostgreSQL accept 005_auth_schema.sql.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
END
$$;
