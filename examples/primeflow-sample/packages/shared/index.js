'use strict';
// Helpers shared by the api, worker and frontend.

const ROLES = Object.freeze({ ADMIN: 'ADMIN', MEMBER: 'MEMBER' });

function slugify(text) {
  return String(text)
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

module.exports = { ROLES, slugify };
