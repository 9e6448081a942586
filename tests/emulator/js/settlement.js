// Abandon (with properties to modify) up to the max delivery count, dead-letter, defer and
// receive deferred, lock renewal, schedule and cancel.
"use strict";

const { run, receive } = require("./harness");

run(async (client, { settleQueue, maxDeliveryCount }) => {
  const report = {};
  const sender = client.createSender(settleQueue);
  const receiver = client.createReceiver(settleQueue, { receiveMode: "peekLock" });

  // Abandon until the max delivery count: each abandon counts, its properties are applied.
  await sender.sendMessages({ body: "abandoned", messageId: "a-1" });
  report.abandons = [];
  for (let attempt = 1; attempt <= maxDeliveryCount; attempt += 1) {
    const [msg] = await receive(receiver, 1, 5);
    if (!msg) break;
    report.abandons.push({
      deliveryCount: msg.deliveryCount,
      attempt: msg.applicationProperties?.attempt ?? null,
    });
    await receiver.abandonMessage(msg, { attempt });
  }
  report.afterAbandons = (await receive(receiver, 1, 1)).length;
  const dlq = client.createReceiver(settleQueue, { subQueueType: "deadLetter" });
  const [dead] = await receive(dlq, 1);
  report.deadLettered = {
    reason: dead.deadLetterReason,
    deliveryCount: dead.deliveryCount,
    attempt: dead.applicationProperties?.attempt,
  };
  await dlq.completeMessage(dead);

  // Dead-letter by the consumer, with a reason and extra properties.
  await sender.sendMessages({ body: "poison", messageId: "d-1" });
  const [poison] = await receive(receiver, 1);
  await receiver.deadLetterMessage(poison, {
    deadLetterReason: "Unreadable",
    deadLetterErrorDescription: "not JSON",
    stage: "parse",
  });
  const [deadByHand] = await receive(dlq, 1);
  report.deadLetteredByHand = {
    reason: deadByHand.deadLetterReason,
    description: deadByHand.deadLetterErrorDescription,
    stage: deadByHand.applicationProperties?.stage,
  };
  await dlq.completeMessage(deadByHand);
  await dlq.close();

  // Defer, then receive by sequence number and complete.
  await sender.sendMessages({ body: "later", messageId: "f-1" });
  const [toDefer] = await receive(receiver, 1);
  const sequenceNumber = toDefer.sequenceNumber;
  await receiver.deferMessage(toDefer, { why: "waiting" });
  report.afterDefer = (await receive(receiver, 1, 1)).length;
  const [deferred] = await receiver.receiveDeferredMessages(sequenceNumber);
  report.deferred = { body: deferred.body, why: deferred.applicationProperties?.why };
  await receiver.completeMessage(deferred);

  // Lock renewal moves lockedUntil on.
  await sender.sendMessages({ body: "slow", messageId: "r-1" });
  const [slow] = await receive(receiver, 1);
  const before = slow.lockedUntilUtc.getTime();
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const renewed = await receiver.renewMessageLock(slow);
  report.renewal = { before, after: renewed.getTime() };
  await receiver.completeMessage(slow);

  // Schedule two, cancel one; peek sees the scheduled one; it arrives when due.
  const due = new Date(Date.now() + 2000);
  const [keep, drop] = await sender.scheduleMessages(
    [
      { body: "scheduled", messageId: "s-1" },
      { body: "cancelled", messageId: "s-2" },
    ],
    due
  );
  await sender.cancelScheduledMessages(drop);
  const peeked = await receiver.peekMessages(10);
  report.scheduledPeek = peeked.map((m) => ({ body: m.body, state: m.state }));
  report.beforeDue = (await receive(receiver, 1, 1)).length;
  const arrived = await receive(receiver, 1, 10);
  report.arrivedAfterDue = arrived.length > 0 && Date.now() >= due.getTime();
  arrived.push(...(await receive(receiver, 1, 1)));  // the cancelled one must not follow
  report.arrived = arrived.map((m) => m.body);
  report.sequenceNumbers = [Number(keep), Number(drop)];
  for (const msg of arrived) await receiver.completeMessage(msg);

  await receiver.close();
  await sender.close();
  return report;
}).catch((error) => {
  process.stderr.write(String(error && error.stack) + "\n");
  process.exit(1);
});
