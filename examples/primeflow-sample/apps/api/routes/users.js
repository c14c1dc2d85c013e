'use strict';

const USERS = [
  { id: 1, email: 'admin@primeflow.local', name: 'Admin', role: 'ADMIN' },
  { id: 2, email: 'ana@primeflow.local', name: 'Ana García', role: 'MEMBER' },
  { id: 3, email: 'kenji@primeflow.local', name: 'Kenji Sato', role: 'MEMBER' },
];

module.exports = {
  path: '/users',
  handler(req, res) {
    if (req.method !== 'GET') {
      res.writeHead(405, { 'content-type': 'application/json', allow: 'GET' });
      return res.end(JSON.stringify({ error: 'method_not_allowed' }));
    }
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
    return res.end(JSON.stringify({ users: USERS }));
  },
};
