// Shared by the conformance scripts: the client, the entity names, and one JSON report on stdout.
// Each script is one scenario group run in one node process; pytest asserts on the report.
"use strict";

const { ServiceBusClient } = require("@azure/service-bus");

const settings = JSON.parse(process.env.CONFORMANCE_SETTINGS);

async function run(scenario) {
  const client = new ServiceBusClient(settings.connectionString, {
    retryOptions: { maxRetries: 0, timeoutInMs: 10000 },
  });
  try {
    const report = await scenario(client, settings);
    process.stdout.write(JSON.stringify(report) + "\n");
  } finally {
    await client.close();
  }
}

// A receiver's messages until `count` arrived or `seconds` passed.
async function receive(receiver, count, seconds = 10) {
  const got = [];
  const deadline = Date.now() + seconds * 1000;
  while (got.length < count && Date.now() < deadline) {
    const batch = await receiver.receiveMessages(count - got.length, { maxWaitTimeInMs: 1000 });
    got.push(...batch);
  }
  return got;
}

function errorReport(error) {
  return { name: error.name, code: error.code, message: String(error.message) };
}

// An AMQP uuid as the SDK hands it over (16 bytes in network order, as a Buffer or as an object
// keyed 0..15 once the SDK has copied the annotations) as text.
function uuidText(value) {
  if (value === undefined || value === null) return null;
  if (typeof value === "object" && !Buffer.isBuffer(value) && 15 in value) {
    value = Buffer.from(Array.from({ length: 16 }, (_, i) => value[i]));
  }
  if (!Buffer.isBuffer(value)) return String(value);
  const h = value.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

module.exports = { run, receive, errorReport, uuidText };

if (require.main === module) {
  run(async () => ({ ok: true })).catch((error) => {
    process.stderr.write(String(error && error.stack) + "\n");
    process.exit(1);
  });
}
