// The path of a request: its upstream attempts in order (Receipt.attemptPath, FailedRequest.attemptPath),
// read from the row's JSON column (src/requests/attempts.ts). An attempt's channel is read through
// the per-operation channels loader (one query for a whole page), or taken from a live event's view.
import { builder } from "../builder.ts";
import type { Channel } from "../../generated/prisma/client.ts";
import { ChannelRole } from "../../generated/prisma/enums.ts";
import { ATTEMPT_CAUSES, readPath, stepCharged, type AttemptCause, type AttemptStep } from "../../requests/attempts.ts";
import { ChannelRef } from "./channel.ts";

/** A stored step, or a live view's step with its channel already built (src/resolvers/live.ts). */
type ReadStep = AttemptStep & { channel?: Channel };

interface RequestAttempt {
  position: number;
  step: ReadStep;
  charged: boolean;
}

/** The attempts of a Receipt or FailedRequest row (or of the row a live view stands for). */
export function attemptsOf(row: { attemptPath: unknown; charge: bigint }): RequestAttempt[] {
  const steps = readPath<ReadStep>(row.attemptPath);
  return steps.map((step, i) => ({ position: i + 1, step, charged: stepCharged(i, steps.length, row.charge) }));
}

const AttemptCauseEnum = builder.enumType("AttemptCause", {
  description: "Why one upstream attempt ended, in tokengate's words (never the upstream's text).",
  values: Object.fromEntries(Object.entries(ATTEMPT_CAUSES).map(([name, description]) => [name, { description }])) as Record<AttemptCause, { description: string }>,
});

export const RequestAttemptRef = builder.objectRef<RequestAttempt>("RequestAttempt").implement({
  description:
    "One upstream attempt of a request: the channel tried, in which role, what the upstream answered and why the attempt ended. A request is charged once, for its last attempt's usage (the answered one; for a failed request, under the key's failed-request policy): earlier attempts are never charged.",
  fields: (t) => ({
    position: t.int({ description: "1 for the first attempt.", resolve: (a) => a.position }),
    channelId: t.id({ resolve: (a) => a.step.channelId }),
    channel: t.field({
      type: ChannelRef,
      nullable: true,
      description: "The channel tried (null only if it is no longer readable).",
      resolve: (a, _args, ctx) => a.step.channel ?? ctx.loaders.channels.load(a.step.channelId),
    }),
    role: t.field({ type: ChannelRole, description: "PRIMARY: the route's first channel; BACKUP: a later one.", resolve: (a) => a.step.role }),
    upstreamStatus: t.int({ nullable: true, description: "The upstream's HTTP status; null when no response came (a connect error, a timeout before its headers).", resolve: (a) => a.step.status }),
    cause: t.field({ type: AttemptCauseEnum, resolve: (a) => a.step.cause }),
    latencyMs: t.int({ description: "From sending the request to the end of the attempt, in milliseconds.", resolve: (a) => a.step.latencyMs }),
    charged: t.boolean({
      description: "Whether the request's charge (above 0) is for this attempt: only ever the last one.",
      resolve: (a) => a.charged,
    }),
  }),
});
