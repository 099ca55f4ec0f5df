// Typed events, published only after the transaction that caused them committed.
// In-process by default; with REDIS_URL every instance receives every event (configureEvents).
import { createPubSub, type PubSub } from "graphql-yoga";

export interface KeyChangedEvent {
  keyId: string;
  status: string;
}

export type Topics = {
  keyChanged: [KeyChangedEvent];
};

export let events: PubSub<Topics> = createPubSub<Topics>();

/** Replaces the event bus (e.g. a Redis-backed one); call before anything subscribes. */
export function setEventBus(bus: PubSub<Topics>): void {
  events = bus;
}
