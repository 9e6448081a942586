// Sessions: a named session with state and lock renewal, FIFO after abandon, a second receiver
// on a held session, the next available session, waiting for one in vain, and a message without
// a session id.
"use strict";

const { ServiceBusClient } = require("@azure/service-bus");
const { run, receive, errorReport } = require("./harness");

async function attempt(fn) {
  try {
    await fn();
    return "succeeded";
  } catch (error) {
    return errorReport(error);
  }
}

run(async (client, { queue, emptyQueue, connectionString }) => {
  const report = {};
  const sender = client.createSender(queue);
  report.withoutSessionId = await attempt(() => sender.sendMessages({ body: "no session" }));
  await sender.sendMessages(["a0", "a1", "a2"].map((body) => ({ body, sessionId: "a" })));
  await sender.sendMessages({ body: "b0", sessionId: "b" });

  const holder = await client.acceptSession(queue, "a");
  report.sessionId = holder.sessionId;
  report.lockedUntilInFuture = holder.sessionLockedUntilUtc.getTime() > Date.now();
  report.peek = (await holder.peekMessages(10)).map((m) => m.body);
  const first = await receive(holder, 3);
  report.first = first.map((m) => m.body);
  await holder.abandonMessage(first[0]);
  for (const m of first.slice(1)) await holder.completeMessage(m);
  const again = await receive(holder, 1);
  report.afterAbandon = again.map((m) => [m.body, m.deliveryCount]);
  await holder.completeMessage(again[0]);
  await holder.setSessionState("s1");
  report.state = String(await holder.getSessionState());
  const before = holder.sessionLockedUntilUtc.getTime();
  await new Promise((resolve) => setTimeout(resolve, 50));
  report.renewed = (await holder.renewSessionLock()).getTime() > before;

  report.second = await attempt(() => client.acceptSession(queue, "a"));
  await holder.close();

  const next = await client.acceptNextSession(queue);
  report.next = next.sessionId;
  const [b0] = await receive(next, 1);
  report.nextBody = b0.body;
  await next.completeMessage(b0);
  await next.close();

  const quick = new ServiceBusClient(connectionString, {
    retryOptions: { maxRetries: 0, timeoutInMs: 2000 },
  });
  const started = Date.now();
  report.nothingAvailable = await attempt(() => quick.acceptNextSession(emptyQueue));
  report.waitedMs = Date.now() - started;
  await quick.close();

  await sender.close();
  return report;
}).catch((error) => {
  process.stderr.write(String(error && error.stack) + "\n");
  process.exit(1);
});
