// A wrong key is an authentication failure carrying the emulator's description; a SAS token
// signed over the unencoded resource URI (Microsoft's AzureSasCredential sample) is accepted.
"use strict";

const { ServiceBusClient } = require("@azure/service-bus");
const { errorReport } = require("./harness");

const { connectionString, wrongKeyConnectionString, sampleTokenConnectionString, queue } =
  JSON.parse(process.env.CONFORMANCE_SETTINGS);

async function sendOnce(cs, body) {
  // The SDK retries UnauthorizedError by design (core-amqp: "credentials may have been
  // rotated"), 3 times 30 s apart by default; one attempt shows what each attempt gets.
  const client = new ServiceBusClient(cs, { retryOptions: { maxRetries: 0 } });
  const started = Date.now();
  try {
    const sender = client.createSender(queue);
    await sender.sendMessages({ body, messageId: body });
    return { ok: true, seconds: (Date.now() - started) / 1000 };
  } catch (error) {
    return { ok: false, seconds: (Date.now() - started) / 1000, error: errorReport(error) };
  } finally {
    await client.close();
  }
}

(async () => {
  const report = {
    wrongKey: await sendOnce(wrongKeyConnectionString, "wrong-key"),
    sampleToken: await sendOnce(sampleTokenConnectionString, "sample-token"),
    rightKey: await sendOnce(connectionString, "right-key"),
  };
  process.stdout.write(JSON.stringify(report) + "\n");
})().catch((error) => {
  process.stderr.write(String(error && error.stack) + "\n");
  process.exit(1);
});
