// Secret generation, hashing and encryption at rest. Secrets are stored only as SHA-256;
// upstream credentials are AES-256-GCM encrypted (HKDF key from TOKENGATE_SECRET, bound to their channel).
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from "node:crypto";

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/** `${prefix}` + 43 base62 characters (≈256 bits of entropy). */
export function generateSecret(prefix: string): string {
  const bytes = randomBytes(48);
  let out = "";
  for (const byte of bytes) {
    if (byte < 248) out += BASE62[byte % 62];
    if (out.length === 43) break;
  }
  // 48 bytes almost always yield 43 accepted characters; top up in the rare case they do not.
  return out.length === 43 ? prefix + out : generateSecret(prefix);
}

export const sha256 = (value: string): string => createHash("sha256").update(value).digest("hex");

export interface SecretDisplay {
  prefix: string;
  last4: string;
}

/** What may be shown of a secret: its recognisable head and last four characters. */
export function displayParts(secret: string, prefixLength: number): SecretDisplay {
  return { prefix: secret.slice(0, prefixLength), last4: secret.slice(-4) };
}

/** Shortest TOKENGATE_SECRET accepted: the key is derived from it, so it must carry enough entropy. */
export const MIN_CREDENTIAL_SECRET_LENGTH = 32;

const aad = (channelId: string) => Buffer.from(`tokengate-channel:${channelId}`, "utf8");

/**
 * Upstream credentials at rest: AES-256-GCM with a key derived by HKDF-SHA256 from TOKENGATE_SECRET,
 * each ciphertext bound to its channel id as additional authenticated data (a ciphertext copied to
 * another channel does not decrypt). Format `v2.<iv>.<tag>.<body>`. `v1` (the earlier scheme: one
 * SHA-256 of the secret, no binding) still decrypts so start-up can re-encrypt stored rows.
 */
export class CredentialCipher {
  private readonly key: Buffer;
  private readonly legacyKey: Buffer;
  constructor(secret: string) {
    if (secret.length < MIN_CREDENTIAL_SECRET_LENGTH) {
      throw new Error(`TOKENGATE_SECRET must be at least ${MIN_CREDENTIAL_SECRET_LENGTH} characters (got ${secret.length}); generate one with: openssl rand -base64 32`);
    }
    this.key = Buffer.from(hkdfSync("sha256", secret, "tokengate", "tokengate upstream credentials v2", 32));
    this.legacyKey = createHash("sha256").update(`tokengate-credentials:${secret}`).digest();
  }
  encrypt(plaintext: string, channelId: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.key, iv);
    cipher.setAAD(aad(channelId));
    const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
    return ["v2", iv.toString("base64"), cipher.getAuthTag().toString("base64"), body.toString("base64")].join(".");
  }
  decrypt(ciphertext: string, channelId: string): string {
    const [version, iv, tag, body] = ciphertext.split(".");
    if ((version !== "v1" && version !== "v2") || !iv || !tag || !body) throw new Error("unrecognised credential ciphertext");
    const decipher = createDecipheriv("aes-256-gcm", version === "v2" ? this.key : this.legacyKey, Buffer.from(iv, "base64"));
    if (version === "v2") decipher.setAAD(aad(channelId));
    decipher.setAuthTag(Buffer.from(tag, "base64"));
    return Buffer.concat([decipher.update(Buffer.from(body, "base64")), decipher.final()]).toString("utf8");
  }
  /** True for ciphertexts of the earlier scheme (re-encrypted at start-up). */
  static isLegacy(ciphertext: string): boolean {
    return ciphertext.startsWith("v1.");
  }
}
