// Send and receive in both modes, peek, messages without an id, the lock token in the delivery
// annotations, batches and the size limit.
"use strict";

const { run, receive, errorReport, uuidText } = require("./harness");

run(async (client, { queue }) => {
  const report = {};
  const sender = client.createSender(queue);

  // Peek-lock: settle by complete; the lock token comes in the delivery annotations too.
  await sender.sendMessages({ body: "one", messageId: "m-1", applicationProperties: { n: 1 } });
  const locking = client.createReceiver(queue, { receiveMode: "peekLock" });
  const [first] = await receive(locking, 1);
  report.peekLock = {
    body: first.body,
    messageId: first.messageId,
    n: first.applicationProperties?.n,
    deliveryCount: first.deliveryCount,
    lockTokenAnnotation: uuidText(first._rawAmqpMessage.deliveryAnnotations?.["x-opt-lock-token"]),
    lockToken: first.lockToken,
  };
  await locking.completeMessage(first);

  // The sender's own delivery annotations reach the receiver (the SDKs' live tests rely on it).
  await sender.sendMessages({
    body: "annotated",
    bodyType: "value",
    deliveryAnnotations: { "x-custom": "from-js" },
    messageAnnotations: {},
    applicationProperties: {},
    properties: { messageId: "annotated-1" },
  });
  const [annotated] = await receive(locking, 1);
  report.deliveryAnnotation = annotated._rawAmqpMessage.deliveryAnnotations?.["x-custom"] ?? null;
  await locking.completeMessage(annotated);

  // A message sent without a message id: the service gives it one; complete must work.
  await sender.sendMessages({ body: "no id" });
  const [noId] = await receive(locking, 1);
  report.withoutId = { messageId: noId.messageId };
  await locking.completeMessage(noId);
  report.withoutId.completed = true;
  await locking.close();

  // Peek does not lock or remove; receive-and-delete removes.
  await sender.sendMessages([{ body: "p1", messageId: "p-1" }, { body: "p2", messageId: "p-2" }]);
  const deleting = client.createReceiver(queue, { receiveMode: "receiveAndDelete" });
  const peeked = await deleting.peekMessages(10);
  report.peek = peeked.map((m) => m.body);
  const taken = await receive(deleting, 2);
  report.receiveAndDelete = taken.map((m) => m.body);
  report.afterDelete = (await deleting.peekMessages(10)).length;

  // Batches: the advertised limit, filling one up, and a single message over the limit.
  const batch = await sender.createMessageBatch();
  report.batchMaxSize = batch.maxSizeInBytes;
  let added = 0;
  while (batch.tryAddMessage({ body: "x".repeat(1000), messageId: `b-${added}` })) added += 1;
  await sender.sendMessages(batch);
  report.batchCount = added;
  const fromBatch = await receive(deleting, added, 20);
  report.batchReceived = fromBatch.length;
  try {
    await sender.sendMessages({ body: "y".repeat(300 * 1024), messageId: "too-big" });
    report.oversize = "sent";
  } catch (error) {
    report.oversize = errorReport(error);
  }
  await deleting.close();

  await sender.close();
  return report;
}).catch((error) => {
  process.stderr.write(String(error && error.stack) + "\n");
  process.exit(1);
});
