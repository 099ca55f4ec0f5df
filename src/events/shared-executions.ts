// One execution per identical subscription. Subscribers of the same document, operation and
// variables whose viewers have the same tenancy (role, organization, project) see the same results,
// so the first one's execution is shared: each event or tick is executed once and handed to every
// subscriber, instead of once per subscriber (100 dashboards: 5 executions per tick, not 500).
//
// What a subscriber that joins late or falls behind gets depends on the stream's kind:
// - state streams (walletBalances, channelStats): the latest result replaces an untaken one, and a
//   joiner gets the latest result at once (what its own first tick would have shown);
// - coalesced delta streams (liveSpend, liveFeed): a consumer more than DETACH_AFTER ticks behind
//   leaves the shared execution for one of its own, which merges what it has not taken (the
//   coalesced streams' promise: never behind, nothing lost); its queued ticks are delivered first;
// - per-event streams: a queue of at most the live queue limit, past which the subscriber is cut
//   off (`onOverflow`: the transport closes it with 4500), as when it runs alone.
import type { DocumentNode, ExecutionResult, OperationDefinitionNode } from "graphql";
import { liveQueueLimit } from "./streams.ts";

export type StreamKind = "state" | "delta" | "event";

const STATE_STREAMS = new Set(["walletBalances", "channelStats"]);
const DELTA_STREAMS = new Set(["liveSpend", "liveFeed"]);

/** Ticks a delta-stream subscriber may hold untaken before it gets an execution of its own. */
const DETACH_AFTER = 4;

type Result = ExecutionResult;
type Started = AsyncIterableIterator<Result> | Result;

const isIterator = (value: Started): value is AsyncIterableIterator<Result> => typeof (value as AsyncIterableIterator<Result>)[Symbol.asyncIterator] === "function";

/** The root field of the operation graphql-ws runs (subscriptions have exactly one). */
export function rootFieldOf(document: DocumentNode, operationName?: string | null): string | null {
  const operation = document.definitions.find((d): d is OperationDefinitionNode => d.kind === "OperationDefinition" && (!operationName || d.name?.value === operationName));
  const first = operation?.selectionSet.selections[0];
  return first?.kind === "Field" ? first.name.value : null;
}

export function streamKind(rootField: string | null): StreamKind {
  if (rootField && STATE_STREAMS.has(rootField)) return "state";
  if (rootField && DELTA_STREAMS.has(rootField)) return "delta";
  return "event";
}

interface Sink {
  push(result: Result): void;
  end(error?: unknown): void;
}

interface Shared {
  kind: StreamKind;
  started: Promise<Started>;
  source: AsyncIterableIterator<Result> | null;
  sinks: Set<Sink>;
  last: Result | null;
}

export interface SharedSubscription {
  /** Identity of the results: document, operation, variables and the viewer's tenancy. */
  key: string;
  kind: StreamKind;
  /** Starts this subscriber's own execution (used to start the shared one, or to detach to one's own). */
  run: () => Promise<Started> | Started;
  /** This subscriber fell more than the queue limit behind (per-event streams). */
  onOverflow: () => void;
}

export class SharedExecutions {
  private readonly shared = new Map<string, Shared>();

  /** Executions running now (for tests and metrics). */
  get size(): number {
    return this.shared.size;
  }

  async subscribe(sub: SharedSubscription): Promise<Started> {
    const existing = this.shared.get(sub.key);
    if (existing) {
      const started = await existing.started;
      // An error result (e.g. a refused argument) is every identical subscriber's answer.
      if (!isIterator(started)) return started;
      if (this.shared.get(sub.key) === existing) return this.attach(sub, existing);
      // It ended while this one waited: start anew.
      return this.subscribe(sub);
    }
    const entry: Shared = { kind: sub.kind, started: Promise.resolve().then(sub.run), source: null, sinks: new Set(), last: null };
    this.shared.set(sub.key, entry);
    let started: Started;
    try {
      started = await entry.started;
    } catch (error) {
      this.forget(sub.key, entry);
      throw error;
    }
    if (!isIterator(started)) {
      this.forget(sub.key, entry);
      return started;
    }
    // The creator attaches before anyone who waited on the same start (their continuations run after this one).
    entry.source = started;
    const iterator = this.attach(sub, entry);
    void this.pump(sub.key, entry, started);
    return iterator;
  }

  private forget(key: string, entry: Shared): void {
    if (this.shared.get(key) === entry) this.shared.delete(key);
  }

  private stop(key: string, entry: Shared): void {
    this.forget(key, entry);
    void entry.source?.return?.();
  }

  private async pump(key: string, entry: Shared, source: AsyncIterableIterator<Result>): Promise<void> {
    try {
      for (;;) {
        const next = await source.next();
        if (next.done) break;
        entry.last = next.value;
        for (const sink of [...entry.sinks]) sink.push(next.value);
      }
      this.forget(key, entry);
      for (const sink of [...entry.sinks]) sink.end();
    } catch (error) {
      this.forget(key, entry);
      for (const sink of [...entry.sinks]) sink.end(error);
    }
  }

  private attach(sub: SharedSubscription, entry: Shared): AsyncIterableIterator<Result> {
    const queue: Result[] = [];
    let waiter: { resolve: (r: IteratorResult<Result>) => void; reject: (e: unknown) => void } | null = null;
    let ended = false;
    let failure: unknown = null;
    /** After a delta-stream subscriber detached: its own execution, read once its queue is drained. */
    let own: Promise<Started> | null = null;

    const leave = () => {
      if (!entry.sinks.delete(sink)) return;
      if (entry.sinks.size === 0 && this.shared.get(sub.key) === entry) this.stop(sub.key, entry);
    };
    const sink: Sink = {
      push: (result) => {
        if (waiter) {
          const w = waiter;
          waiter = null;
          w.resolve({ value: result, done: false });
          return;
        }
        if (entry.kind === "state") {
          queue[0] = result;
          return;
        }
        queue.push(result);
        if (entry.kind === "delta" && queue.length > DETACH_AFTER) {
          leave();
          own = Promise.resolve(sub.run());
          return;
        }
        if (queue.length > liveQueueLimit()) {
          leave();
          queue.length = 0;
          ended = true;
          sub.onOverflow();
        }
      },
      end: (error) => {
        ended = true;
        failure = error ?? null;
        if (!waiter) return;
        const w = waiter;
        waiter = null;
        if (failure) w.reject(failure);
        else w.resolve({ value: undefined, done: true });
      },
    };
    entry.sinks.add(sink);
    if (entry.kind === "state" && entry.last) queue.push(entry.last);

    const ownNext = async (): Promise<IteratorResult<Result>> => {
      const started = await own!;
      if (!isIterator(started)) {
        own = null;
        ended = true;
        return { value: started, done: false };
      }
      return started.next();
    };
    const iterator: AsyncIterableIterator<Result> = {
      next() {
        if (queue.length) return Promise.resolve({ value: queue.shift()!, done: false });
        if (own) return ownNext();
        if (failure) {
          const error = failure;
          failure = null;
          return Promise.reject(error);
        }
        if (ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (waiter = { resolve, reject }));
      },
      async return() {
        leave();
        ended = true;
        queue.length = 0;
        if (waiter) {
          waiter.resolve({ value: undefined, done: true });
          waiter = null;
        }
        if (own) {
          const started = await own.catch(() => null);
          if (started && isIterator(started)) await started.return?.();
        }
        return { value: undefined, done: true };
      },
      async throw(error?: unknown) {
        await iterator.return!();
        throw error;
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }
}
