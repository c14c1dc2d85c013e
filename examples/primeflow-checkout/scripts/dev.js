'use strict';
// pnpm dev — como `pnpm start`, mas reinicia a API e o worker quando um arquivo muda (node --watch).
process.env.NODE_ENV = process.env.NODE_ENV || 'development';
require('./start').run({ watch: true });
