'use strict';
// Minimal frontend build: copy src/ and public/ into dist/ and stamp the version.
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist');
const version = fs.readFileSync(path.join(root, 'VERSION'), 'utf8').trim();

fs.rmSync(dist, { recursive: true, force: true });
fs.cpSync(path.join(root, 'public'), dist, { recursive: true });
fs.cpSync(path.join(root, 'src'), dist, { recursive: true });
fs.writeFileSync(path.join(dist, 'version.json'), JSON.stringify({ version }) + '\n');
console.log(`built frontend ${version} into ${path.relative(root, dist)}/`);
