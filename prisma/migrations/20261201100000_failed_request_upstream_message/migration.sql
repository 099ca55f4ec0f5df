-- The upstream's own error text of a failed request, for organization admins only (issue 14, point 11).
CREATE TABLE "FailedRequestUpstreamMessage" (
    "requestId" TEXT NOT NULL,
    "organizationId" TEXT,
    "message" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "FailedRequestUpstreamMessage_pkey" PRIMARY KEY ("requestId")
);
