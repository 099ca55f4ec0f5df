// The services this process runs with, and the one place they are installed. Start-up builds them
// from one Config (src/services.ts startServices) and installs them here before anything runs; the
// gateway and the GraphQL server are handed them explicitly, and the domain modules that act on
// their own (a key change publishing keyChanged, a credential being encrypted) read them here.
// This replaces the configure*() calls each module had. Until something is installed (unit tests,
// scripts), the defaults are those of an empty environment: an in-process bus and no credential key.
import { loadConfig, type Config } from "./config.ts";
import { localEventBus, type EventBus } from "./events/index.ts";
import { HealthTracker } from "./health/index.ts";
import type { CredentialCipher } from "./secrets.ts";
import { KeyCache } from "./keys/cache.ts";

export interface Services {
  /** Every setting (src/config.ts). */
  config: Config;
  events: EventBus;
  /** Channel health of this instance (the gateway's fallback reads and feeds it). */
  health: HealthTracker;
  /** Encrypts channel credentials and webhook secrets at rest; null: no TOKENGATE_SECRET (using it throws). */
  cipher: CredentialCipher | null;
  /** The gateway's key lookups, kept fresh by this bus's keyChanged events. */
  keys: KeyCache;
  /** Closes what start-up opened, in reverse order (src/services.ts). */
  close(): Promise<void>;
}

let current: Services | null = null;

/** The installed services (the defaults of an empty environment until start-up installs its own). */
export function services(): Services {
  if (!current) {
    const config = loadConfig({});
    const events = localEventBus();
    const keys = new KeyCache(events);
    current = {
      config,
      events,
      health: new HealthTracker(config.health, events),
      cipher: null,
      keys,
      close: () => {
        keys.close();
        return events.close();
      },
    };
  }
  return current;
}

/**
 * Installs `next` as this process's services. Start-up calls it once; tests call it to run with
 * other settings (a new Services object keeps the running bus unless it brings its own: what
 * subscribed to the old bus stays on it, so a bus is replaced only before anything subscribes).
 */
export function installServices(next: Services): Services {
  current = next;
  return next;
}

/** The installed services with other settings (tests and benches serving on port 0, with a token, …). */
export function servicesWith(config: Config): Services {
  return { ...services(), config };
}
