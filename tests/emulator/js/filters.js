// Correlation and SQL filters (and a SQL action) on a topic's subscriptions.
"use strict";

const { run, receive } = require("./harness");

run(async (client, { topic }) => {
  const sender = client.createSender(topic);
  await sender.sendMessages([
    { body: "created-eu", messageId: "1", subject: "OrderCreated", applicationProperties: { region: "EU", amount: 250 } },
    { body: "created-us", messageId: "2", subject: "OrderCreated", applicationProperties: { region: "US", amount: 20 } },
    { body: "refund", messageId: "3", subject: "Refund", correlationId: "billing", applicationProperties: { region: "EU", amount: 5 } },
  ]);
  await sender.close();
  const report = {};
  for (const subscription of ["billing", "big-eu", "everything"]) {
    const receiver = client.createReceiver(topic, subscription, { receiveMode: "receiveAndDelete" });
    const got = await receive(receiver, 3, 3);
    report[subscription] = got.map((m) => ({
      body: m.body,
      to: m.to ?? null,
      reviewed: m.applicationProperties?.reviewed ?? null,
    }));
    await receiver.close();
  }
  return report;
}).catch((error) => {
  process.stderr.write(String(error && error.stack) + "\n");
  process.exit(1);
});
