// The services a test process runs with: the installed defaults (an empty environment's Config, an
// in-process bus) plus the fixtures' credential key, installed once, the way start-up installs its own.
import { loadConfig, type Config } from "../../src/config.ts";
import { installServices, services } from "../../src/installed.ts";
import { CredentialCipher } from "../../src/secrets.ts";

/** The key the fixtures encrypt channel credentials with (spawned instances get it as TOKENGATE_SECRET). */
export const TEST_SECRET = "test-secret-not-for-production-0123456789";

if (!services().cipher) installServices({ ...services(), cipher: new CredentialCipher(TEST_SECRET) });

/** The test process's event bus (one for the whole file: nothing replaces it). */
export const events = services().events;
export const listen = events.listen;
export const listenerCount = (): number => events.listenerCount();

/** Runs with other settings from now on (the bus, health and key stay): e.g. LIVE_QUEUE_LIMIT, TOKENGATE_ALLOW_PRIVATE_UPSTREAMS. */
export function setConfig(change: (config: Config) => Config): void {
  installServices({ ...services(), config: change(services().config) });
}

/** Back to the settings of an empty environment. */
export function resetConfig(): void {
  setConfig(() => loadConfig({}));
}

/** TOKENGATE_ALLOW_PRIVATE_UPSTREAMS as the installed Config says (the test receivers listen on loopback). */
export function allowPrivateUpstreams(allowed: boolean): void {
  setConfig((config) => ({ ...config, admin: { ...config.admin, allowPrivateUpstreams: allowed } }));
}

/** LIVE_QUEUE_LIMIT as the installed Config says. */
export function setLiveQueueLimit(limit: number): void {
  setConfig((config) => ({ ...config, admin: { ...config.admin, liveQueueLimit: limit } }));
}
