'use strict';
// PrimeFlow background worker — writes a heartbeat every 2 s.
const fs = require('node:fs');
const path = require('node:path');

const ROOT = process.env.PRIMEFLOW_ROOT || path.resolve(__dirname, '../..');
const VERSION = fs.readFileSync(path.join(ROOT, 'VERSION'), 'utf8').trim();
const INTERVAL_MS = 2000;

console.log(`worker started version ${VERSION}`);
const timer = setInterval(() => {
  console.log(`worker heartbeat ${new Date().toISOString()} version ${VERSION}`);
}, INTERVAL_MS);

function shutdown(signal) {
  clearInterval(timer);
  console.log(`worker received ${signal}, exiting`);
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
