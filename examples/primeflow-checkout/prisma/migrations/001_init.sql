-- 001_init.sql — PrimeFlow 1.0.0
-- Usuários e papéis. Aplicar com: psql "$DATABASE_URL" -f prisma/migrations/001_init.sql

CREATE TYPE "Role" AS ENUM ('ADMIN', 'MANAGER', 'MEMBER');

CREATE TABLE "User" (
    "id" SERIAL NOT NULL,
    "email" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "passwordHash" TEXT NOT NULL,
    "role" "Role" NOT NULL DEFAULT 'MEMBER',
    "active" BOOLEAN NOT NULL DEFAULT true,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX "User_email_key" ON "User"("email");

-- Usuários iniciais (senha de desenvolvimento: primeflow123 — troque em produção)
INSERT INTO "User" ("email", "name", "passwordHash", "role") VALUES
    ('admin@primeflow.dev', 'Administrador', '$2b$10$3euPcmQFCiblsZeEu5s7p.9OVHgeHWFDk9nhMqZ0m/3pd/lhwZgES', 'ADMIN'),
    ('joao.silva@primeflow.dev', 'João Silva', '$2b$10$3euPcmQFCiblsZeEu5s7p.9OVHgeHWFDk9nhMqZ0m/3pd/lhwZgES', 'MANAGER'),
    ('maria.souza@primeflow.dev', 'Maria Souza', '$2b$10$3euPcmQFCiblsZeEu5s7p.9OVHgeHWFDk9nhMqZ0m/3pd/lhwZgES', 'MEMBER');
