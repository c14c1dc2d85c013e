'use strict';
// GET /projects — projetos de demonstração.
const { PROJECT_STATUS, slugify } = require('../../../packages/shared');

const PROJECTS = [
  { id: 1, name: 'Onboarding de clientes', ownerId: 1, status: PROJECT_STATUS.ACTIVE },
  { id: 2, name: 'Relatórios trimestrais', ownerId: 2, status: PROJECT_STATUS.ACTIVE },
  { id: 3, name: 'Migração legada', ownerId: 2, status: PROJECT_STATUS.ARCHIVED },
].map((project) => ({ ...project, slug: slugify(project.name) }));

module.exports = {
  path: '/projects',
  handler(req, res, { sendJson }) {
    if (req.method !== 'GET') return sendJson(res, 405, { error: 'Method Not Allowed' });
    const { searchParams } = new URL(req.url, 'http://localhost');
    const status = searchParams.get('status');
    const data = status ? PROJECTS.filter((p) => p.status === status.toUpperCase()) : PROJECTS;
    return sendJson(res, 200, { data, total: data.length });
  },
};
