'use strict';
// GET /users — lista fixa (a API de exemplo não acessa o banco).

const USERS = [
  { id: 1, email: 'admin@primeflow.dev', name: 'Administrador', role: 'ADMIN' },
  { id: 2, email: 'joao.silva@primeflow.dev', name: 'João Silva', role: 'MANAGER' },
  { id: 3, email: 'maria.souza@primeflow.dev', name: 'Maria Souza', role: 'MEMBER' },
];

module.exports = {
  path: '/users',
  handler(req, res, { sendJson }) {
    if (req.method !== 'GET') return sendJson(res, 405, { error: 'Method Not Allowed' });
    return sendJson(res, 200, { data: USERS, total: USERS.length });
  },
};
