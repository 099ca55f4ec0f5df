// SharedExecutions: identical subscriptions share one execution; what a late joiner and a consumer
// that falls behind get, per kind of stream. The executions here are plain async iterators fed by
// the test (the GraphQL side is covered over graphql-ws in live-fanout and shared-subscriptions).
import { describe, expect, it } from "vitest";
import type { ExecutionResult } from "graphql";
import { parse } from "graphql";
import { SharedExecutions, rootFieldOf, streamKind, type StreamKind } from "../src/events/shared-executions.ts";
import { liveQueueLimit } from "../src/events/streams.ts";
import { setLiveQueueLimit } from "./support/services.ts";

/** An execution the test feeds by hand: push(n) emits { data: { n } }. */
function execution() {
  const pending: Array<(r: IteratorResult<ExecutionResult>) => void> = [];
  const ready: ExecutionResult[] = [];
  let returned = false;
  const iterator: AsyncIterableIterator<ExecutionResult> = {
    next: () => (ready.length ? Promise.resolve({ value: ready.shift()!, done: false }) : new Promise((resolve) => pending.push(resolve))),
    return: () => {
      returned = true;
      for (const p of pending.splice(0)) p({ value: undefined, done: true });
      return Promise.resolve({ value: undefined, done: true });
    },
    [Symbol.asyncIterator]: () => iterator,
  };
  return {
    iterator,
    push: (n: number) => {
      const value = { data: { n } };
      const waiting = pending.shift();
      if (waiting) waiting({ value, done: false });
      else ready.push(value);
    },
    returned: () => returned,
  };
}

const tick = () => new Promise((r) => setTimeout(r, 5));
const n = (r: IteratorResult<ExecutionResult>) => (r.value as ExecutionResult).data!.n as number;

async function setup(kind: StreamKind) {
  const hub = new SharedExecutions();
  const runs: Array<ReturnType<typeof execution>> = [];
  let overflows = 0;
  const subscribe = async () =>
    (await hub.subscribe({
      key: "same",
      kind,
      run: () => {
        const e = execution();
        runs.push(e);
        return e.iterator;
      },
      onOverflow: () => overflows++,
    })) as AsyncIterableIterator<ExecutionResult>;
  return { hub, runs, subscribe, overflows: () => overflows };
}

describe("SharedExecutions", () => {
  it("identical subscribers share one execution; it stops when the last one leaves", async () => {
    const { hub, runs, subscribe } = await setup("event");
    const a = await subscribe();
    const b = await subscribe();
    expect(runs).toHaveLength(1);
    const nextA = a.next();
    const nextB = b.next();
    runs[0]!.push(1);
    expect([n(await nextA), n(await nextB)]).toEqual([1, 1]);
    await a.return!();
    expect(runs[0]!.returned()).toBe(false);
    await b.return!();
    expect(runs[0]!.returned()).toBe(true);
    expect(hub.size).toBe(0);
    // The next subscriber starts a new execution.
    await subscribe();
    expect(runs).toHaveLength(2);
  });

  it("an error result is every identical subscriber's answer and nothing is kept", async () => {
    const hub = new SharedExecutions();
    const error: ExecutionResult = { errors: [] };
    let runs = 0;
    const sub = {
      key: "bad",
      kind: "event" as const,
      run: () => {
        runs++;
        return error;
      },
      onOverflow: () => undefined,
    };
    const [x, y] = await Promise.all([hub.subscribe(sub), hub.subscribe(sub)]);
    expect(x).toBe(error);
    expect(y).toBe(error);
    expect(runs).toBe(1);
    expect(hub.size).toBe(0);
  });

  it("state streams: a late joiner gets the latest result at once; untaken results are replaced by the latest", async () => {
    const { runs, subscribe } = await setup("state");
    const a = await subscribe();
    const first = a.next();
    runs[0]!.push(1);
    expect(n(await first)).toBe(1);
    runs[0]!.push(2);
    await tick();
    const b = await subscribe();
    expect(n(await b.next())).toBe(2);
    // a did not take 2 yet; 3 and 4 arrive: it gets only the latest.
    runs[0]!.push(3);
    runs[0]!.push(4);
    await tick();
    expect(n(await a.next())).toBe(4);
    expect(n(await b.next())).toBe(4);
  });

  it("delta streams: a consumer more than a few ticks behind gets its own execution after what it holds; the others stay shared", async () => {
    const { runs, subscribe } = await setup("delta");
    const slow = await subscribe();
    const fast = await subscribe();
    const seen: number[] = [];
    const reading = (async () => {
      for (let i = 0; i < 8; i++) seen.push(n(await fast.next()));
    })();
    for (let i = 1; i <= 8; i++) {
      runs[0]!.push(i);
      await tick();
    }
    await reading;
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    // The slow one detached when its fifth tick arrived: a second execution of its own.
    expect(runs).toHaveLength(2);
    const got: number[] = [];
    for (let i = 0; i < 5; i++) got.push(n(await slow.next()));
    expect(got).toEqual([1, 2, 3, 4, 5]);
    // Then its own execution's ticks (which coalesce what it has not taken), not the shared one's.
    const next = slow.next();
    runs[1]!.push(100);
    expect(n(await next)).toBe(100);
    await slow.return!();
    expect(runs[1]!.returned()).toBe(true);
    expect(runs[0]!.returned()).toBe(false);
  });

  it("per-event streams: a subscriber more than the queue limit behind is cut off; the others go on", async () => {
    const limit = liveQueueLimit();
    setLiveQueueLimit(10);
    try {
      const { runs, subscribe, overflows } = await setup("event");
      const stalled = await subscribe();
      const reader = await subscribe();
      for (let i = 1; i <= 12; i++) {
        runs[0]!.push(i);
        await tick();
        expect(n(await reader.next())).toBe(i);
      }
      expect(overflows()).toBe(1);
      expect((await stalled.next()).done).toBe(true);
      expect(runs[0]!.returned()).toBe(false);
    } finally {
      setLiveQueueLimit(limit);
    }
  });

  it("knows each subscription's kind by its root field", () => {
    const kind = (query: string, name?: string) => streamKind(rootFieldOf(parse(query), name));
    expect(kind(`subscription { walletBalances { at } }`)).toBe("state");
    expect(kind(`subscription { channelStats(intervalMs: 250) { at } }`)).toBe("state");
    expect(kind(`subscription S { renamed: liveSpend { requests } }`)).toBe("delta");
    expect(kind(`subscription { liveFeed { requests } }`)).toBe("delta");
    expect(kind(`subscription { keySpend(keyId: "k") { keyId } }`)).toBe("event");
    expect(kind(`subscription A { keySpend(keyId: "k") { keyId } } subscription B { liveFeed { requests } }`, "B")).toBe("delta");
  });
});
