-- AlterEnum
ALTER TYPE "FailureCause" ADD VALUE 'INTERNAL_ERROR';

