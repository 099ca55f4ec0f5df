// Secret generation, hashing and encryption at rest. Secrets are stored only as SHA-256;
// upstream credentials are AES-256-GCM encrypted with a key derived from TOKENGATE_SECRET.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";

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

export class CredentialCipher {
  private readonly key: Buffer;
  constructor(secret: string) {
    this.key = createHash("sha256").update(`tokengate-credentials:${secret}`).digest();
  }
  encrypt(plaintext: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.key, iv);
    const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
    return ["v1", iv.toString("base64"), cipher.getAuthTag().toString("base64"), body.toString("base64")].join(".");
  }
  decrypt(ciphertext: string): string {
    const [version, iv, tag, body] = ciphertext.split(".");
    if (version !== "v1" || !iv || !tag || !body) throw new Error("unrecognised credential ciphertext");
    const decipher = createDecipheriv("aes-256-gcm", this.key, Buffer.from(iv, "base64"));
    decipher.setAuthTag(Buffer.from(tag, "base64"));
    return Buffer.concat([decipher.update(Buffer.from(body, "base64")), decipher.final()]).toString("utf8");
  }
}
