'use strict';
// pnpm typecheck — sem TypeScript: confere em tempo de execução os contratos entre os módulos
// (cada rota exporta { path: '/...', handler(req, res, ctx) }, o pacote shared exporta suas funções).
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const errors = [];

const routesDir = path.join(ROOT, 'apps', 'api', 'routes');
const seen = new Map();
for (const file of fs.readdirSync(routesDir).filter((f) => f.endsWith('.js')).sort()) {
  const route = require(path.join(routesDir, file));
  if (typeof route.path !== 'string' || !route.path.startsWith('/')) errors.push(`routes/${file}: path deve começar com /`);
  if (typeof route.handler !== 'function') errors.push(`routes/${file}: handler deve ser uma função`);
  if (seen.has(route.path)) errors.push(`routes/${file}: path ${route.path} repetido (${seen.get(route.path)})`);
  seen.set(route.path, file);
}

const shared = require(path.join(ROOT, 'packages', 'shared'));
for (const name of ['slugify', 'describeDatabaseUrl']) {
  if (typeof shared[name] !== 'function') errors.push(`packages/shared: ${name} deve ser uma função`);
}
if (shared.slugify('Ação Rápida') !== 'acao-rapida') errors.push('packages/shared: slugify mudou de comportamento');

if (errors.length) {
  console.error(`typecheck: ${errors.length} erro(s):\n  ${errors.join('\n  ')}`);
  process.exit(1);
}
console.log(`typecheck: ${seen.size} rotas e o pacote shared ok`);
