-- Seed default users
INSERT INTO "User" ("email", "name", "role", "updatedAt") VALUES
    ('admin@primeflow.local', 'Admin', 'ADMIN', CURRENT_TIMESTAMP),
    ('ana@primeflow.local', 'Ana García', 'MEMBER', CURRENT_TIMESTAMP),
    ('kenji@primeflow.local', 'Kenji Sato', 'MEMBER', CURRENT_TIMESTAMP);

-- Seed default projects
INSERT INTO "Project" ("name", "slug", "description", "ownerId", "updatedAt")
SELECT 'Onboarding', 'onboarding', 'Getting started with PrimeFlow', u."id", CURRENT_TIMESTAMP
FROM "User" u WHERE u."email" = 'admin@primeflow.local';

INSERT INTO "Project" ("name", "slug", "description", "ownerId", "updatedAt")
SELECT 'Roadmap 2025', 'roadmap-2025', NULL, u."id", CURRENT_TIMESTAMP
FROM "User" u WHERE u."email" = 'ana@primeflow.local';
