-- Dados de demonstração (make seed). Idempotente: pode rodar mais de uma vez.
INSERT INTO "Project" ("name", "slug", "description", "ownerId")
SELECT 'Onboarding de clientes', 'onboarding-de-clientes', 'Fluxo padrão de entrada', u."id"
FROM "User" u WHERE u."email" = 'admin@primeflow.dev'
ON CONFLICT ("slug") DO NOTHING;

INSERT INTO "Project" ("name", "slug", "description", "ownerId")
SELECT 'Relatórios trimestrais', 'relatorios-trimestrais', NULL, u."id"
FROM "User" u WHERE u."email" = 'joao.silva@primeflow.dev'
ON CONFLICT ("slug") DO NOTHING;
