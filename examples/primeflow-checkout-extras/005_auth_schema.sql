-- 005_auth_schema.sql — PrimeFlow 3.2.0 (em desenvolvimento)
-- Login social. Escrita para o PostgreSQL gerenciado de produção, que JÁ TEM o papel
-- "authenticated" (criado pelo provedor) e a extensão pgcrypto disponível.

CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth."Identity" (
    "id" UUID NOT NULL DEFAULT gen_random_uuid(),
    "userId" INTEGER NOT NULL,
    "provider" TEXT NOT NULL,
    "providerId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Identity_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX "Identity_provider_providerId_key" ON auth."Identity"("provider", "providerId");

ALTER TABLE auth."Identity" ADD CONSTRAINT "Identity_userId_fkey"
    FOREIGN KEY ("userId") REFERENCES public."User"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- id do usuário logado, lido do JWT que o provedor coloca na sessão
CREATE OR REPLACE FUNCTION auth.uid() RETURNS INTEGER
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('request.jwt.claim.sub', true), '')::INTEGER $$;

GRANT USAGE ON SCHEMA auth TO authenticated;
GRANT SELECT ON auth."Identity" TO authenticated;
