'use strict';
// PrimeFlow worker — processa a fila em intervalos (aqui só registra um batimento).
//   WORKER_INTERVAL_MS (5000)
const { describeDatabaseUrl } = require('../../packages/shared');

const INTERVAL_MS = Number(process.env.WORKER_INTERVAL_MS || 5000);
const db = describeDatabaseUrl(process.env.DATABASE_URL);
let ticks = 0;

console.log(`[worker] iniciado (intervalo ${INTERVAL_MS} ms, banco ${db ? `${db.host}/${db.database}` : 'não definido'})`);
const timer = setInterval(() => {
  ticks += 1;
  console.log(`[worker] ${new Date().toISOString()} ciclo ${ticks}: fila vazia`);
}, INTERVAL_MS);

function shutdown(signal) {
  clearInterval(timer);
  console.log(`[worker] ${signal} recebido após ${ticks} ciclos, encerrando`);
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
