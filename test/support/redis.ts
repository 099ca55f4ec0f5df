// A real redis-server for multi-instance tests (Debian's package; .ci/run installs it).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import net from "node:net";
import { freePort } from "./net.ts";

export function redisAvailable(): boolean {
  return spawnSync("redis-server", ["--version"], { stdio: "ignore" }).status === 0;
}

/** Says loudly why the multi-instance tests cannot run here; in CI a missing Redis is a failure. */
export function requireRedis(): boolean {
  if (redisAvailable()) return true;
  const message = "redis-server is not installed: the multi-instance (PostgreSQL + Redis) tests are SKIPPED. Install it with `apt-get install redis-server` (.ci/run does).";
  if (process.env.CI) throw new Error(message);
  console.warn(`\n${"!".repeat(100)}\n${message}\n${"!".repeat(100)}\n`);
  return false;
}

export async function startRedis(): Promise<{ url: string; stop: () => Promise<void> }> {
  const port = await freePort();
  const child: ChildProcess = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.end();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error("redis-server did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}
