'use strict';
// pnpm build — frontend estático: copia public/ e src/ para dist/ e grava dist/build.json.
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const DIST = path.join(ROOT, 'dist');
const version = fs.readFileSync(path.join(ROOT, 'VERSION'), 'utf8').trim();

fs.rmSync(DIST, { recursive: true, force: true });
fs.cpSync(path.join(ROOT, 'public'), DIST, { recursive: true });
fs.cpSync(path.join(ROOT, 'src'), DIST, { recursive: true });
fs.writeFileSync(path.join(DIST, 'build.json'), `${JSON.stringify({ version }, null, 2)}\n`);
console.log(`build: frontend ${version} em dist/`);
