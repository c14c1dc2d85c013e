'use strict';
// PrimeFlow API — dependency-free HTTP server (node core modules only).
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = process.env.PRIMEFLOW_ROOT || path.resolve(__dirname, '../..');
const VERSION = fs.readFileSync(path.join(ROOT, 'VERSION'), 'utf8').trim();
const PORT = Number(process.env.PORT || 3001);
const HOST = process.env.HOST || '0.0.0.0';

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(data),
  });
  res.end(data);
}

// Load every routes/*.js module (sorted); each exports { path, handler(req, res) }.
const routes = new Map();
const routesDir = path.join(__dirname, 'routes');
for (const file of fs.readdirSync(routesDir).filter((f) => f.endsWith('.js')).sort()) {
  const mod = require(path.join(routesDir, file));
  routes.set(mod.path, mod.handler);
}
routes.set('/health', (req, res) => sendJson(res, 200, { status: 'ok', version: VERSION }));

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, 'http://localhost');
  const handler = routes.get(pathname);
  if (!handler) return sendJson(res, 404, { error: 'not_found', path: pathname });
  try {
    return handler(req, res);
  } catch (err) {
    console.error(err);
    return sendJson(res, 500, { error: 'internal_error' });
  }
});

server.listen(PORT, HOST, () => {
  console.log(`api listening on ${HOST}:${PORT} version ${VERSION}`);
});

function shutdown(signal) {
  console.log(`api received ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
