-- Pre-flight from history (issue 17, point 4): estimateRun reads a project's latest finished runs of a mode.
CREATE INDEX "Run_projectId_mode_status_createdAt_idx" ON "Run"("projectId", "mode", "status", "createdAt");
