'use strict';
// Utilitários compartilhados entre api, worker e frontend.

const ROLES = Object.freeze({ ADMIN: 'ADMIN', MANAGER: 'MANAGER', MEMBER: 'MEMBER' });
const PROJECT_STATUS = Object.freeze({ ACTIVE: 'ACTIVE', PAUSED: 'PAUSED', ARCHIVED: 'ARCHIVED' });

function slugify(text) {
  return String(text)
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

// Descreve um DATABASE_URL sem a senha: { host, port, database, schema } (ou null se inválido).
function describeDatabaseUrl(url) {
  if (!url) return null;
  try {
    const parsed = new URL(url);
    return {
      host: parsed.hostname || 'localhost',
      port: parsed.port || '5432',
      database: decodeURIComponent(parsed.pathname.replace(/^\//, '')) || '(padrão)',
      schema: parsed.searchParams.get('schema') || 'public',
    };
  } catch {
    return null;
  }
}

module.exports = { ROLES, PROJECT_STATUS, slugify, describeDatabaseUrl };
