import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { canRead, tenancyWhere } from "../auth/index.ts";
import { changeKeyStatus, createApiKey, rotateKey, setKeyCaps } from "../keys/index.ts";
import { badInput, notFound } from "../errors.ts";
import { BalanceBucket, FailedChargePolicy } from "../generated/prisma/enums.ts";
import { viewerOf } from "./viewer.ts";
import { ApiKeyConnection, ApiKeyOrder } from "../schema/types/api-key.ts";
import type { Context } from "../schema/builder.ts";

/**
 * The viewer's scope AND the argument: an argument only narrows. (Spread into one object, a
 * projectId argument replaced a project viewer's own project and listed another project's keys.)
 */
const keysWhere = (ctx: Context, args: { projectId?: string | number | null; search?: string | null }) => ({
  AND: [tenancyWhere(viewerOf(ctx)), args.projectId ? { projectId: String(args.projectId) } : {}, searchWhere(args.search)],
});

/** `search`: a key whose name contains it (any case) or whose display prefix / last 4 match it. */
function searchWhere(search: string | null | undefined) {
  const text = search?.trim();
  if (!text) return {};
  if (text.length > 100) throw badInput("search", "at most 100 characters");
  return { OR: [{ name: { contains: text, mode: "insensitive" as const } }, { prefix: { startsWith: text } }, { last4: text }] };
}

builder.queryFields((t) => ({
  apiKeys: t.prismaConnection(
    {
      type: "ApiKey",
      cursor: "id",
      args: {
        projectId: t.arg.id({ required: false }),
        search: t.arg.string({
          required: false,
          description: "Keys whose name contains this text (any case), or whose prefix starts with it / whose last 4 characters are it. At most 100 characters.",
        }),
        orderBy: t.arg({ type: ApiKeyOrder.Input, required: false, description: ApiKeyOrder.description }),
      },
      resolve: (query, _root, args, ctx) => db.apiKey.findMany({ ...query, where: keysWhere(ctx, args), orderBy: ApiKeyOrder.orderBy(args.orderBy) }),
      totalCount: (_conn, args, ctx) => db.apiKey.count({ where: keysWhere(ctx, args) }),
    },
    ApiKeyConnection,
  ),
  apiKey: t.prismaField({
    type: "ApiKey",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const key = await db.apiKey.findUnique({ ...query, where: { id: String(id) } });
      if (!key || !canRead(viewerOf(ctx), key.organizationId, key.projectId)) throw notFound("API key", String(id));
      return key;
    },
  }),
}));

const KeyCapsFields = {
  dailyCap: "Daily cap in the cap bucket's currency; null removes it.",
  perRequestMaxCharge: "Largest worst-case charge one request may reserve; null removes it.",
  rpmLimit: "Requests per minute (sliding window, across instances); null = no limit. Over it: 429 rate_limit_exceeded.",
  tpmLimit: "Tokens per minute: a request counts its reserved prompt + output bound at admission, corrected to its real usage after; null = no limit.",
  maxConcurrent: "Requests of this key in flight at once; null = no limit.",
} as const;

const CreateApiKeyInput = builder.inputType("CreateApiKeyInput", {
  fields: (t) => ({
    projectId: t.id({ required: true }),
    name: t.string({ required: true }),
    allowedModels: t.stringList({ required: false, description: "Empty or omitted = every routed model." }),
    allowedBuckets: t.field({ type: [BalanceBucket], required: false, description: "Default both; the first is the key's primary bucket." }),
    lowerCostRoutes: t.boolean({ required: false }),
    backupRoutes: t.boolean({ required: false }),
    dailyCap: t.field({ type: "Decimal", required: false, description: KeyCapsFields.dailyCap }),
    perRequestMaxCharge: t.field({ type: "Decimal", required: false, description: KeyCapsFields.perRequestMaxCharge }),
    capBucket: t.field({ type: BalanceBucket, required: false, description: "Bucket the caps count (default: primary bucket)." }),
    retryCeiling: t.int({ required: false }),
    failedChargePolicy: t.field({ type: FailedChargePolicy, required: false }),
    expiresAt: t.field({ type: "DateTime", required: false }),
    rpmLimit: t.int({ required: false, description: KeyCapsFields.rpmLimit }),
    tpmLimit: t.int({ required: false, description: KeyCapsFields.tpmLimit }),
    maxConcurrent: t.int({ required: false, description: KeyCapsFields.maxConcurrent }),
  }),
});

const SetKeyCapsInput = builder.inputType("SetKeyCapsInput", {
  description: "Omitted fields stay as they are; an explicit null removes a cap.",
  fields: (t) => ({
    keyId: t.id({ required: true }),
    dailyCap: t.field({ type: "Decimal", required: false, description: KeyCapsFields.dailyCap }),
    perRequestMaxCharge: t.field({ type: "Decimal", required: false, description: KeyCapsFields.perRequestMaxCharge }),
    capBucket: t.field({ type: BalanceBucket, required: false }),
    retryCeiling: t.int({ required: false }),
    failedChargePolicy: t.field({ type: FailedChargePolicy, required: false }),
    allowedModels: t.stringList({ required: false }),
    allowedBuckets: t.field({ type: [BalanceBucket], required: false }),
    lowerCostRoutes: t.boolean({ required: false }),
    backupRoutes: t.boolean({ required: false }),
    expiresAt: t.field({ type: "DateTime", required: false }),
    rpmLimit: t.int({ required: false, description: KeyCapsFields.rpmLimit }),
    tpmLimit: t.int({ required: false, description: KeyCapsFields.tpmLimit }),
    maxConcurrent: t.int({ required: false, description: KeyCapsFields.maxConcurrent }),
  }),
});

interface CreatedKey {
  apiKeyId: string;
  secret: string;
}

const CreatedApiKey = builder.objectRef<CreatedKey>("CreatedApiKey").implement({
  description: "The secret is returned here only, never again: store it now.",
  fields: (t) => ({
    apiKey: t.prismaField({
      type: "ApiKey",
      resolve: (query, created) => db.apiKey.findUniqueOrThrow({ ...query, where: { id: created.apiKeyId } }),
    }),
    secret: t.exposeString("secret"),
  }),
});

builder.mutationFields((t) => ({
  createApiKey: t.field({
    type: CreatedApiKey,
    args: { input: t.arg({ type: CreateApiKeyInput, required: true }) },
    resolve: async (_root, { input }, ctx) => {
      const { apiKey, secret } = await createApiKey(viewerOf(ctx), { ...input, projectId: String(input.projectId) });
      return { apiKeyId: apiKey.id, secret };
    },
  }),
  setKeyCaps: t.prismaField({
    type: "ApiKey",
    args: { input: t.arg({ type: SetKeyCapsInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const key = await setKeyCaps(viewerOf(ctx), { ...input, keyId: String(input.keyId) });
      return db.apiKey.findUniqueOrThrow({ ...query, where: { id: key.id } });
    },
  }),
  ...Object.fromEntries(
    (["pauseKey", "resumeKey", "revokeKey"] as const).map((action) => [
      action,
      t.prismaField({
        type: "ApiKey",
        args: { id: t.arg.id({ required: true }) },
        resolve: async (query, _root, { id }, ctx) => {
          const key = await changeKeyStatus(viewerOf(ctx), String(id), action);
          return db.apiKey.findUniqueOrThrow({ ...query, where: { id: key.id } });
        },
      }),
    ]),
  ),
  rotateKey: t.field({
    type: CreatedApiKey,
    description: "Issues a new secret; the previous one keeps working for graceSeconds (default 3600), then stops.",
    args: { id: t.arg.id({ required: true }), graceSeconds: t.arg.int({ required: false }) },
    resolve: async (_root, { id, graceSeconds }, ctx) => {
      const { apiKey, secret } = await rotateKey(viewerOf(ctx), String(id), graceSeconds);
      return { apiKeyId: apiKey.id, secret };
    },
  }),
}));
