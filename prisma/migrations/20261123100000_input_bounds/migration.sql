-- Audio / file parts reserve the route's configured maximum (null: refused).
ALTER TABLE "Route" ADD COLUMN "maxUnboundedPartTokens" INTEGER;

-- Usage above the reservation (or absurd) is charged at the reservation and flagged.
ALTER TABLE "Receipt" ADD COLUMN "usageExceededReservation" BOOLEAN NOT NULL DEFAULT false;
