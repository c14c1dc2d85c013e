'use strict';
// pnpm lint — checa a sintaxe de todo .js (node --check) e a validade de todo .json do projeto.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const SKIP = new Set(['node_modules', 'dist', 'coverage', 'uploads', 'storage', 'patches', 'backups', '.git']);

function* walk(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (SKIP.has(entry.name)) continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(full);
    else if (entry.isFile()) yield full;
  }
}

const problems = [];
let checked = 0;
for (const file of walk(ROOT)) {
  const rel = path.relative(ROOT, file);
  if (file.endsWith('.js')) {
    checked += 1;
    const done = spawnSync(process.execPath, ['--check', file], { encoding: 'utf8' });
    if (done.status !== 0) problems.push(`${rel}: ${done.stderr.trim().split('\n').slice(-1)[0]}`);
  } else if (file.endsWith('.json')) {
    checked += 1;
    try {
      JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      problems.push(`${rel}: JSON inválido (${err.message})`);
    }
  }
}

if (problems.length) {
  console.error(`lint: ${problems.length} problema(s):\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log(`lint: ${checked} arquivos ok`);
