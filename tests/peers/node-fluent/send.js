// send.js: numbered records through @fluent-org/logger, Fluentd's official Node.js client.
//
//   node send.js --port 24224 --n 100 --tag node.test [--mode Message|Forward|PackedForward|CompressedPackedForward]
//                [--ack] [--milliseconds] [--event-time] [--shared-key K --hostname H] [--flush-interval MS]
//
// Record i is {message: "<tag> <i>", seq: i, level: "warn"}. Exit 0 once every emit resolved
// (with --ack: once the server acknowledged it) and the client shut down; 1 with the error.
"use strict";
const { FluentClient, EventTime } = require("@fluent-org/logger");

function args(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected ${a}`);
    const key = a.slice(2);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith("--")) out[key] = true;
    else { out[key] = next; i++; }
  }
  return out;
}

async function main() {
  const a = args(process.argv.slice(2));
  const n = Number(a.n || 10);
  const tag = a.tag || "node.test";
  const options = {
    socket: { host: a.host || "127.0.0.1", port: Number(a.port || 24224), timeout: 10000, disableReconnect: false },
    eventMode: a.mode || "PackedForward",
    milliseconds: Boolean(a.milliseconds),
    flushInterval: Number(a["flush-interval"] || 0),
  };
  if (a.ack) options.ack = { ackTimeout: 10000 };
  if (a["shared-key"]) options.security = { clientHostname: a.hostname || "node-client", sharedKey: a["shared-key"] };
  const client = new FluentClient(null, options);
  const sent = [];
  for (let i = 0; i < n; i++) {
    const rec = { message: `${tag} ${i}`, seq: i, level: "warn" };
    if (a["event-time"]) sent.push(client.emit(tag, rec, new EventTime(1714564800 + i, 123456789)));
    else sent.push(client.emit(tag, rec));
  }
  await Promise.all(sent);
  await client.shutdown();
}

main().then(
  () => process.exit(0),
  (err) => { console.error("send.js:", err && err.stack ? err.stack : err); process.exit(1); },
);
