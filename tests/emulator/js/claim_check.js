// A JavaScript consumer of the original design reading what claimcheck-bus (Python) published:
// `IsClaimCheck === true` must hold, and a plain GET of ClaimCheckBlobUri returns the payload.
"use strict";

const crypto = require("node:crypto");
const { run, receive } = require("./harness");

run(async (client, { queue, count }) => {
  const receiver = client.createReceiver(queue, { receiveMode: "peekLock" });
  const got = await receive(receiver, count);
  const report = [];
  for (const msg of got) {
    const props = msg.applicationProperties ?? {};
    const entry = {
      messageId: msg.messageId,
      isClaimCheckType: typeof props.IsClaimCheck,
      claimChecked: props.IsClaimCheck === true,
      bodyLength: msg.body ? msg.body.length : 0,
    };
    if (entry.claimChecked) {
      const response = await fetch(props.ClaimCheckBlobUri);
      const payload = Buffer.from(await response.arrayBuffer());
      entry.status = response.status;
      entry.payloadLength = payload.length;
      entry.sizeMatches = Number(props.ClaimCheckSize) === payload.length;
      entry.sha256Matches =
        crypto.createHash("sha256").update(payload).digest("hex") === props.ClaimCheckSha256;
    }
    await receiver.completeMessage(msg);
    report.push(entry);
  }
  await receiver.close();
  return report;
}).catch((error) => {
  process.stderr.write(String(error && error.stack) + "\n");
  process.exit(1);
});
