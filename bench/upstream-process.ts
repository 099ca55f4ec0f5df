// The fake upstream in its own process (the benchmark must not share an event loop with it).
// Prints {"port": n} on its first stdout line.
import { startFakeUpstream } from "../test/support/fake-upstream.ts";

const fake = await startFakeUpstream({ port: Number(process.env.PORT ?? 0) });
// Keep the recorded-request list from growing over a long run.
setInterval(() => {
  fake.requests.length = 0;
}, 1_000).unref();
process.stdout.write(`${JSON.stringify({ port: fake.port })}\n`);
process.on("SIGTERM", () => void fake.close().then(() => process.exit(0)));
