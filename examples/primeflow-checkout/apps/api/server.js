'use strict';
// PrimeFlow API — servidor HTTP sem dependências (apenas módulos do node).
//
//   PORT (4000), HOST (0.0.0.0), DATABASE_URL (só exibido no início), HEALTH_STATUS (status
//   HTTP do /health; padrão 200 — útil em testes).
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const { describeDatabaseUrl } = require('../../packages/shared');

const PORT = Number(process.env.PORT || 4000);
const HOST = process.env.HOST || '0.0.0.0';
const HEALTH_STATUS = Number(process.env.HEALTH_STATUS || 200);
const STARTED_AT = Date.now();

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(data),
  });
  res.end(data);
}

function health(req, res) {
  sendJson(res, HEALTH_STATUS, {
    status: HEALTH_STATUS >= 200 && HEALTH_STATUS < 300 ? 'ok' : 'error',
    timestamp: new Date().toISOString(),
    uptime: Math.round((Date.now() - STARTED_AT) / 10) / 100,
  });
}

// Cada routes/*.js exporta { path, handler(req, res, ctx) }; carregados em ordem alfabética.
const routes = new Map([['/health', health]]);
const routesDir = path.join(__dirname, 'routes');
for (const file of fs.readdirSync(routesDir).filter((f) => f.endsWith('.js')).sort()) {
  const route = require(path.join(routesDir, file));
  routes.set(route.path, route.handler);
}

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, 'http://localhost');
  const handler = routes.get(pathname.replace(/\/+$/, '') || '/');
  if (!handler) return sendJson(res, 404, { error: 'Not Found', path: pathname });
  try {
    return handler(req, res, { sendJson });
  } catch (err) {
    console.error('[api] erro em', pathname, err);
    return sendJson(res, 500, { error: 'Internal Server Error' });
  }
});

const db = describeDatabaseUrl(process.env.DATABASE_URL);
server.listen(PORT, HOST, () => {
  console.log(`[api] PrimeFlow API ouvindo em http://${HOST}:${PORT}`);
  console.log(
    db ? `[api] banco: ${db.host}:${db.port}/${db.database} (schema ${db.schema})` : '[api] banco: DATABASE_URL não definido'
  );
  console.log(`[api] rotas: ${[...routes.keys()].sort().join(', ')}`);
});

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`[api] ${signal} recebido, encerrando`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
