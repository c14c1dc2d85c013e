'use strict';
// pnpm start — sobe a API e o worker como processos filhos e repassa SIGTERM/SIGINT.
// Sai quando qualquer um dos dois termina (com o código dele).
const { spawn } = require('node:child_process');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const APPS = { api: 'apps/api/server.js', worker: 'apps/worker/index.js' };

function run({ watch = false } = {}) {
  const children = Object.entries(APPS).map(([name, entry]) => {
    const args = watch ? ['--watch', entry] : [entry];
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: 'inherit' });
    child.name = name;
    return child;
  });
  let exiting = false;
  const stopAll = (signal) => {
    exiting = true;
    for (const child of children) if (child.exitCode === null) child.kill(signal);
  };
  process.on('SIGTERM', () => stopAll('SIGTERM'));
  process.on('SIGINT', () => stopAll('SIGINT'));
  let remaining = children.length;
  let status = 0;
  for (const child of children) {
    child.on('exit', (code, signal) => {
      if (!exiting) {
        console.error(`[start] ${child.name} terminou (${signal || code}); parando os demais`);
        status = code || 1;
        stopAll('SIGTERM');
      }
      remaining -= 1;
      if (remaining === 0) process.exit(status);
    });
  }
}

module.exports = { run };
if (require.main === module) run();
