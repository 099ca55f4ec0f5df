// Subscription sources with a bound: what a subscriber has not taken yet is either queued up to a
// limit (per-event streams: keySpend, receiptCreated, …) or merged into the one pending tick
// (coalesced streams: liveSpend, channelStats, walletBalances). Nothing is ever buffered without
// limit for a consumer that falls behind: a queue that overflows ends its stream with
// SlowConsumerError, which the transports turn into a documented close (README, "Live views").

import { services } from "../installed.ts";

/** A subscriber fell more than its queue's limit behind. */
export class SlowConsumerError extends Error {
  readonly code = "SLOW_CONSUMER";
  constructor(readonly limit: number) {
    super(`this subscriber fell more than ${limit} events behind and was disconnected; subscribe again (coalesced streams such as liveSpend never fall behind)`);
  }
}

/** Events queued per subscription before its consumer is cut off (LIVE_QUEUE_LIMIT of the installed Config). */
export const liveQueueLimit = (): number => services().config.admin.liveQueueLimit;

/** Called when a stream is cut off for falling behind (the transport closes the connection). */
export type OverflowHandler = (error: SlowConsumerError) => void;

/**
 * A bounded queue fed synchronously by `start(push)` (which returns its unsubscribe). A plain
 * iterator, not a generator: return() unsubscribes at once, even while a next() waits.
 */
export function boundedStream<T>(start: (push: (value: T) => void) => () => void, options: { limit?: number; onOverflow?: OverflowHandler } = {}): AsyncIterableIterator<T> {
  const limit = options.limit ?? liveQueueLimit();
  const queue: T[] = [];
  let waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | null = null;
  let done = false;
  let failure: SlowConsumerError | null = null;
  const finish = () => {
    if (done) return;
    done = true;
    stop();
    queue.length = 0;
  };
  const push = (value: T) => {
    if (done) return;
    if (waiter) {
      const w = waiter;
      waiter = null;
      w.resolve({ value, done: false });
      return;
    }
    if (queue.length >= limit) {
      failure = new SlowConsumerError(limit);
      finish();
      options.onOverflow?.(failure);
      return;
    }
    queue.push(value);
  };
  const stop = start(push);
  const iterator: AsyncIterableIterator<T> = {
    next() {
      if (queue.length) return Promise.resolve({ value: queue.shift()!, done: false });
      if (failure) {
        const error = failure;
        failure = null;
        return Promise.reject(error);
      }
      if (done) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve, reject) => (waiter = { resolve, reject }));
    },
    return() {
      finish();
      if (waiter) {
        waiter.resolve({ value: undefined, done: true });
        waiter = null;
      }
      return Promise.resolve({ value: undefined, done: true });
    },
    throw(error?: unknown) {
      finish();
      return Promise.reject(error);
    },
    [Symbol.asyncIterator]: () => iterator,
  };
  // Overflow while a next() waits cannot happen (the waiter takes the value); overflow while none
  // waits rejects the next one.
  return iterator;
}

/**
 * A coalesced stream: `feed` merges events into the pending tick, and every `intervalMs` the tick
 * (if anything happened) is handed to the consumer. A consumer that has not taken the previous tick
 * yet keeps it pending, and later events merge into it: one tick per subscriber at most, whatever
 * the rate or the consumer's speed. `build` turns the pending state into the value sent.
 */
export function coalescedStream<T>(options: {
  intervalMs: number;
  /** Subscribes the feeder; returns the unsubscribe. `touch` marks the state changed. */
  start: (touch: () => void) => () => void;
  /** The value for the pending changes, and resets them; null: nothing to send. */
  take: () => T | null;
  /** Sent once, before the first tick (the current standing). */
  initial?: () => T | null;
  /** Optional periodic emission even without change (every `heartbeatMs`). */
  heartbeatMs?: number;
  onStop?: () => void;
}): AsyncIterableIterator<T> {
  let changed = false;
  let waiter: ((r: IteratorResult<T>) => void) | null = null;
  let ready: T | null = options.initial?.() ?? null;
  let done = false;
  let lastSent = Date.now();
  const stop = options.start(() => {
    changed = true;
  });
  const deliver = (value: T) => {
    lastSent = Date.now();
    if (waiter) {
      const w = waiter;
      waiter = null;
      w({ value, done: false });
    } else ready = value;
  };
  const timer = setInterval(() => {
    // The consumer still holds no tick (it has not asked since the last one): merge into the pending one.
    if (!waiter) return;
    const due = changed || (options.heartbeatMs !== undefined && Date.now() - lastSent >= options.heartbeatMs);
    if (!due) return;
    changed = false;
    const value = options.take();
    if (value !== null) deliver(value);
  }, options.intervalMs);
  timer.unref();
  const finish = () => {
    if (done) return;
    done = true;
    clearInterval(timer);
    stop();
    options.onStop?.();
  };
  const iterator: AsyncIterableIterator<T> = {
    next() {
      if (ready !== null) {
        const value = ready;
        ready = null;
        return Promise.resolve({ value, done: false });
      }
      if (done) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve) => (waiter = resolve));
    },
    return() {
      finish();
      if (waiter) {
        waiter({ value: undefined, done: true });
        waiter = null;
      }
      return Promise.resolve({ value: undefined, done: true });
    },
    throw(error?: unknown) {
      finish();
      return Promise.reject(error);
    },
    [Symbol.asyncIterator]: () => iterator,
  };
  return iterator;
}
